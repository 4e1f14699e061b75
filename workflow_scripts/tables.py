"""Entry point of rule tables: the paper's tables and figures from every eval's records."""

import argparse
from pathlib import Path

from spadec.eval.publish import publish, records_digest
from spadec.io import read_json
from spadec.logs import setup_logging
from spadec.provenance import RunInfo

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument(
    "--config", required=True, nargs="+", help="resolved eval.tables settings (JSON)"
)
parser.add_argument("--evals", required=True, nargs="+", help="eval_speed output directories")
parser.add_argument("--tables", required=True, help="tables directory")
parser.add_argument("--figures", required=True, help="figures directory")
args = parser.parse_args()

setup_logging()
# One settings file per model; the response table shows the largest count asked for.
settings = [read_json(p) for p in args.config]
examples = max(s["response_examples"] for s in settings)
tables = publish(args.evals, args.tables, args.figures, examples)
print(tables["speedup"].to_string(index=False))
# A smoke run (spadec/smoke.py) is recorded next to its tables: they are no paper numbers.
smoke = {"smoke": True} if any(s.get("smoke") for s in settings) else {}
RunInfo("tables", {"response_examples": examples, **smoke}).write(
    Path(args.tables) / "run_info.json", records=[records_digest(p) for p in args.evals]
)
