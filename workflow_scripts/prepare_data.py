"""Entry point of rule prepare_data: build every dataset of one model."""

import argparse

from spadec.data.prepare import prepare_data
from spadec.io import atomic_dir, read_json
from spadec.logs import setup_logging
from spadec.provenance import RunInfo

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved data settings (JSON)")
parser.add_argument("--prompts", required=True, help="directory of the project's prompt files")
parser.add_argument("--out", required=True, help="output directory")
args = parser.parse_args()

setup_logging()
settings = read_json(args.config)
run_info = RunInfo("prepare_data", settings)
with atomic_dir(args.out) as tmp:
    prepare_data(settings, tmp, args.prompts)
    run_info.write(tmp / "run_info.json")
