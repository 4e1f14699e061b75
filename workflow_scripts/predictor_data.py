"""Entry point of rule predictor_data: record draft-tree nodes' layer-K states + labels."""

import argparse
from pathlib import Path

from spadec.decoding.draft import TreeParams
from spadec.eagle.data import read_distilled, shard_records
from spadec.eagle.head import check_head_fits, load_head
from spadec.io import read_json
from spadec.logs import setup_logging
from spadec.predictor.data import collect_nodes, write_shard
from spadec.runtime.load import load_target

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved predictor.data settings (JSON)")
parser.add_argument("--decode", required=True, help="resolved eagle.decode settings (JSON)")
parser.add_argument("--dllm", required=True, help="D-LLM target directory")
parser.add_argument("--head", required=True, help="the D-LLM target's EAGLE head")
parser.add_argument("--distill", required=True, help="the D-LLM target's distill directory")
parser.add_argument("--shard", type=int, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

setup_logging()
settings, decode = read_json(args.config), read_json(args.decode)
records = read_distilled(Path(args.distill) / "distill.jsonl")[: settings["prompts"]]
mine = shard_records(records, args.shard, settings["shards"])
model, tokenizer = load_target(args.dllm, decode["dtype"])
head = load_head(args.head, model.dtype, next(model.parameters()).device)
check_head_fits(head, args.head, model, args.dllm)
data = collect_nodes(
    model,
    head,
    [r["prompt_ids"] for r in mine],
    TreeParams.from_settings(decode),
    settings["layer_k"],
    settings["max_new_tokens"],
    tokenizer.eos_token_id,
)
write_shard(
    data,
    args.out,
    {"shard": args.shard, "shards": settings["shards"], "prompt_ids": [r["id"] for r in mine]},
)
