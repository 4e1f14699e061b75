"""Entry point of rule distill: the target answers the training prompts itself."""

import argparse

from spadec.decoding.catalog import TARGETS
from spadec.eagle.distill import distill
from spadec.io import read_json
from spadec.logs import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved eagle settings (JSON)")
parser.add_argument("--target", required=True, help="target model directory")
parser.add_argument("--name", required=True, choices=TARGETS, help="target name")
parser.add_argument("--data", required=True, help="the model's data directory")
parser.add_argument("--ckpt", required=True, help="partial results (not an output)")
parser.add_argument("--out", required=True, help="output directory")
args = parser.parse_args()

setup_logging()
distill(read_json(args.config), args.target, args.data, args.out, args.ckpt, args.name)
