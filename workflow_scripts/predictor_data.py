"""Entry point of rule predictor_data: record draft-tree nodes' layer-K states + labels,
for the trees of one drafter kind (EAGLE-2's, or Medusa's) on SpaDec's D-LLM."""

import argparse
from pathlib import Path

from spadec.decoding.draft import DraftLMHead, TreeParams
from spadec.decoding.medusa import medusa_decode
from spadec.decoding.medusa_trees import named_tree
from spadec.eagle.data import read_distilled, shard_records
from spadec.eagle.head import check_head_fits, load_head
from spadec.eagle.vocab import draft_token_ids, load_token_counts
from spadec.io import read_json
from spadec.logs import setup_logging
from spadec.medusa.heads import check_heads_fit, load_heads
from spadec.predictor.data import collect_nodes, collect_tree_nodes, write_shard
from spadec.runtime.load import load_target

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="resolved predictor.data settings (JSON)")
parser.add_argument("--decode", required=True, help="resolved eagle.decode settings (JSON)")
parser.add_argument("--drafter", choices=["eagle", "medusa"], default="eagle")
parser.add_argument("--medusa", help="resolved medusa.decode settings (JSON; --drafter medusa)")
parser.add_argument("--dllm", required=True, help="D-LLM target directory")
parser.add_argument("--head", required=True, help="the D-LLM target's EAGLE head or Medusa heads")
parser.add_argument("--distill", required=True, help="the D-LLM target's distill directory")
parser.add_argument("--shard", type=int, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

setup_logging()
settings, decode = read_json(args.config), read_json(args.decode)
records = read_distilled(Path(args.distill) / "distill.jsonl")[: settings["prompts"]]
mine = shard_records(records, args.shard, settings["shards"])
model, tokenizer = load_target(args.dllm, decode["dtype"])
device = next(model.parameters()).device
prompts = [r["prompt_ids"] for r in mine]
counts = (settings["layer_k"], settings["max_new_tokens"], tokenizer.eos_token_id)
if args.drafter == "eagle":
    head = load_head(args.head, model.dtype, device)
    check_head_fits(head, args.head, model, args.dllm)
    draft_lm_head = None  # the eval's drafting: its reduced vocabulary, if any
    if decode["draft_vocab"] is not None:
        ids = draft_token_ids(load_token_counts(args.head), decode["draft_vocab"], args.head)
        draft_lm_head = DraftLMHead(model.lm_head, ids)
    params = TreeParams.from_settings(decode)
    data = collect_nodes(model, head, prompts, params, *counts, draft_lm_head=draft_lm_head)
else:
    if not args.medusa:
        parser.error("--drafter medusa needs --medusa (the medusa.decode settings)")
    heads = load_heads(args.head, model.dtype, device)
    check_heads_fit(heads, args.head, model, args.dllm)
    tree = named_tree(read_json(args.medusa)["tree"])

    def medusa(input_ids, *loop_args, **loop_kwargs):
        return medusa_decode(model, heads, input_ids, tree, *loop_args, **loop_kwargs)

    data = collect_tree_nodes(medusa, model, prompts, *counts)
write_shard(
    data,
    args.out,
    {
        "shard": args.shard,
        "shards": settings["shards"],
        "drafter": args.drafter,
        "prompt_ids": [r["id"] for r in mine],
    },
)
