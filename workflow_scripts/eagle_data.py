"""Entry point of rule eagle_data: one shard of (token ids, target features, loss mask)."""

import argparse
from pathlib import Path

from spadec.decoding.catalog import TARGETS
from spadec.eagle.data import read_distilled, shard_records, write_shard
from spadec.io import read_json
from spadec.logs import setup_logging
from spadec.runtime.load import load_target

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved eagle settings (JSON)")
parser.add_argument("--target", required=True, help="target model directory")
parser.add_argument("--name", required=True, choices=TARGETS, help="target name")
parser.add_argument("--distill", required=True, help="the target's distill directory")
parser.add_argument("--shard", type=int, required=True)
parser.add_argument("--out", required=True, help="shard directory")
args = parser.parse_args()

setup_logging()
settings = read_json(args.config)
records = read_distilled(Path(args.distill) / "distill.jsonl")
mine = shard_records(records, args.shard, settings["shards"])
model, _ = load_target(args.target, settings["dtype"])
write_shard(
    model,
    mine,
    args.out,
    shard=args.shard,
    shards=settings["shards"],
    target=args.name,
    batch_size=settings["data_batch_size"],
    max_len=settings["max_len"],
    feature_dtype=settings["feature_dtype"],
)
