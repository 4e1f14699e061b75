"""Entry point of rule eval_decoding: ar / dllm / eagle2 / eagle2_dllm / spadec_eagle2 side by side."""

import argparse
import json

from spadec.eval.decoding import evaluate_decoding
from spadec.io import atomic_dir, read_json, write_json, write_jsonl
from spadec.logs import setup_logging
from spadec.provenance import RunInfo

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved eagle settings (JSON)")
parser.add_argument("--base", required=True, help="dense target directory")
parser.add_argument("--dllm", required=True, help="D-LLM target directory")
parser.add_argument("--head-dense", required=True)
parser.add_argument("--head-dllm", required=True)
parser.add_argument("--predictor", required=True, help="the acceptance predictor directory")
parser.add_argument("--ats", required=True, help="resolved predictor.decode settings (JSON)")
parser.add_argument("--data", required=True, help="the model's data directory")
parser.add_argument("--out", required=True, help="output directory")
args = parser.parse_args()

setup_logging()
settings = read_json(args.config)
ats = read_json(args.ats)
run_info = RunInfo("eval_decoding", {**settings, "ats": ats})
metrics, records = evaluate_decoding(
    settings, args.base, args.dllm, args.head_dense, args.head_dllm, args.data, args.predictor, ats
)
with atomic_dir(args.out) as tmp:
    write_json(tmp / "metrics.json", metrics)
    write_jsonl(tmp / "records.jsonl", records)
    run_info.write(tmp / "run_info.json")
print(json.dumps(metrics["methods"], indent=2))
