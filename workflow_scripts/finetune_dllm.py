"""Entry point of rule finetune_dllm: LoRA + routers on the base model (one process per rank)."""

import argparse

from spadec.dllm.train import finetune
from spadec.io import read_json
from spadec.logs import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved dllm settings (JSON)")
parser.add_argument("--base", required=True, help="base model directory")
parser.add_argument("--data", required=True, help="the model's data directory")
parser.add_argument("--ckpt", required=True, help="resumable training state (not an output)")
parser.add_argument("--out", required=True, help="adapter output directory")
args = parser.parse_args()

setup_logging()
finetune(read_json(args.config), args.base, args.data, args.out, args.ckpt)
