"""Entry point of rule prepare_base: build, save and evaluate one base model."""

import argparse

from spadec.base.prepare import prepare_base
from spadec.io import read_json
from spadec.logs import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved base settings (JSON)")
parser.add_argument("--data", required=True, help="the model's data directory")
parser.add_argument("--ckpt", required=True, help="resumable training state (not an output)")
parser.add_argument("--out", required=True, help="output HF model directory")
args = parser.parse_args()

setup_logging()
prepare_base(read_json(args.config), args.data, args.out, args.ckpt)
