"""Entry point of rule eval_speed: every method side by side on one benchmark of one model.

The model artefacts are options named after their catalog keys (`catalog.artefact_option`:
--base, --dllm, --dllm-baseline, --head-<target>, --predictor); the rule passes those the
configured methods load (`catalog.eval_inputs`), and a method whose artefact is missing
fails naming it."""

import argparse
import json

from spadec.decoding.catalog import DATA, artefact_help, artefact_option, model_keys
from spadec.eval.bench import evaluate_bench
from spadec.io import atomic_dir, read_json, write_json, write_jsonl
from spadec.logs import setup_logging
from spadec.provenance import RunInfo

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", required=True, help="the model's name in the config")
parser.add_argument("--bench", required=True, help="benchmark name (data/eval_<bench>.jsonl)")
parser.add_argument("--speed", required=True, help="resolved eval.speed settings (JSON)")
parser.add_argument("--decode", required=True, help="resolved eagle.decode settings (JSON)")
parser.add_argument("--ats", required=True, help="resolved predictor.decode settings (JSON)")
parser.add_argument("--medusa", help="resolved medusa.decode settings (JSON; default: schema's)")
for key in model_keys():
    parser.add_argument(
        artefact_option(key), dest=key, metavar="DIR", help=artefact_help(key, default=False)
    )
parser.add_argument(f"--{DATA}", required=True, help="the model's data directory")
parser.add_argument("--out", required=True, help="output directory")
args = parser.parse_args()

setup_logging()
speed, decode, ats = read_json(args.speed), read_json(args.decode), read_json(args.ats)
medusa = read_json(args.medusa) if args.medusa else None
settings = {"speed": speed, "decode": decode, "ats": ats}
run_info = RunInfo("eval_speed", {**settings, "medusa": medusa} if medusa else settings)
paths = {key: getattr(args, key) for key in (*model_keys(), DATA) if getattr(args, key)}
metrics, records = evaluate_bench(args.model, args.bench, speed, decode, ats, paths, medusa=medusa)
with atomic_dir(args.out) as tmp:
    write_json(tmp / "metrics.json", metrics)
    write_jsonl(tmp / "records.jsonl", records)
    run_info.write(tmp / "run_info.json")
print(json.dumps(metrics["methods"], indent=2))
