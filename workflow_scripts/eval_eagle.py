"""Entry point of rule eval_eagle: ar / dllm / eagle2 / eagle2_dllm side by side."""

import argparse
import json

from spadec.eagle.evaluate import evaluate_eagle
from spadec.io import atomic_dir, read_json, write_json, write_jsonl
from spadec.logs import setup_logging
from spadec.provenance import RunInfo

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved eagle settings (JSON)")
parser.add_argument("--base", required=True, help="dense target directory")
parser.add_argument("--dllm", required=True, help="D-LLM target directory")
parser.add_argument("--head-dense", required=True)
parser.add_argument("--head-dllm", required=True)
parser.add_argument("--data", required=True, help="the model's data directory")
parser.add_argument("--out", required=True, help="output directory")
args = parser.parse_args()

setup_logging()
settings = read_json(args.config)
run_info = RunInfo("eval_eagle", settings)
metrics, records = evaluate_eagle(
    settings, args.base, args.dllm, args.head_dense, args.head_dllm, args.data
)
with atomic_dir(args.out) as tmp:
    write_json(tmp / "metrics.json", metrics)
    write_jsonl(tmp / "records.jsonl", records)
    run_info.write(tmp / "run_info.json")
print(json.dumps(metrics["methods"], indent=2))
