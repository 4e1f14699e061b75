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
examples = max(read_json(p)["response_examples"] for p in args.config)
tables = publish(args.evals, args.tables, args.figures, examples)
print(tables["speedup"].to_string(index=False))
RunInfo("tables", {"response_examples": examples}).write(
    Path(args.tables) / "run_info.json", records=[records_digest(p) for p in args.evals]
)
