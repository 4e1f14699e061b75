"""Entry point of rule train_predictor: logistic regression on layer-K node states."""

import argparse

from spadec.io import read_json
from spadec.logs import setup_logging
from spadec.predictor.train import train_predictor

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved predictor.train settings (JSON)")
parser.add_argument("--data", required=True, nargs="+", help="predictor data shard directories")
parser.add_argument("--out", required=True, help="predictor directory")
args = parser.parse_args()

setup_logging()
train_predictor(read_json(args.config), args.data, args.out)
