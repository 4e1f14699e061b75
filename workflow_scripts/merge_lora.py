"""Entry point of rule merge_lora: fold the adapter into the D-LLM weights."""

import argparse

from spadec.dllm.merge import merge_lora
from spadec.io import read_json
from spadec.logs import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved dllm settings (JSON)")
parser.add_argument("--base", required=True)
parser.add_argument("--adapter", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

setup_logging()
merge_lora(args.adapter, args.base, read_json(args.config), args.out)
