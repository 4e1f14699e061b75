"""Entry point of rule convert_hf: the final D-LLM HF directory."""

import argparse

from spadec.dllm.merge import convert_hf
from spadec.io import read_json
from spadec.logs import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved dllm settings (JSON)")
parser.add_argument("--merged", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

setup_logging()
convert_hf(args.merged, args.out, read_json(args.config)["dtype"])
