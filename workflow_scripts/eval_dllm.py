"""Entry point of rule eval_dllm: D-LLM vs its dense base, side by side."""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spadec.dllm.evaluate import evaluate_dllm
from spadec.dllm.routing_figure import routing_figure
from spadec.io import atomic_path, read_json, write_json
from spadec.logs import setup_logging
from spadec.provenance import RunInfo

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved dllm settings (JSON)")
parser.add_argument("--base", required=True)
parser.add_argument("--dllm", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--out", required=True, help="metrics.json")
parser.add_argument("--figure", required=True, help="routing figure (PNG)")
args = parser.parse_args()

setup_logging()
settings = read_json(args.config)
run_info = RunInfo("eval_dllm", settings)
device = "cuda" if torch.cuda.is_available() else "cpu"
dense = AutoModelForCausalLM.from_pretrained(args.base).to(device)
dllm = AutoModelForCausalLM.from_pretrained(args.dllm).to(device)
tokenizer = AutoTokenizer.from_pretrained(args.dllm)
metrics = evaluate_dllm(dense, dllm, tokenizer, args.data, settings)
metrics["run_info"] = run_info.as_dict()
write_json(args.out, metrics)
with atomic_path(args.figure) as tmp:
    routing_figure(metrics["routing"], tmp, f"{args.dllm}: routing on held-out dialogues")
