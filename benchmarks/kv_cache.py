"""K/V cache storage: preallocated buffers with in-place compaction (the runtime's
`LayerSkipCache`) against growing each layer by `torch.cat` every step and re-indexing it
on commit (the storage the runtime had before), side by side in one process.

    python benchmarks/kv_cache.py --results results/tiny --prompts 8 --rounds 2

For each method the same held-out prompts are decoded with both storages, alternating the
order prompt by prompt, after a warm-up; it prints tokens/s of each, the ratio, and
whether greedy outputs are identical (they must be: the storage holds the same entries).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import spadec.decoding.autoregressive as plain_module
import spadec.decoding.eagle2 as eagle2_module
import spadec.decoding.loop as loop_module
from spadec.base.chat import prompt_ids
from spadec.decoding.draft import TreeParams
from spadec.eval.bench import load_prompts, results_paths
from spadec.eval.methods import Models, run_method
from spadec.io import read_json
from spadec.runtime.cache import LayerSkipCache

USERS = (plain_module, eagle2_module, loop_module)  # the modules that create caches


class ConcatCache(LayerSkipCache):
    """The reference: every append concatenates, every commit re-indexes a new tensor."""

    def _reserve(self, idx, k, needed):
        pass  # storage is exactly the entries

    def append(self, idx, k, v):
        if self.buffers[idx] is not None:
            k = torch.cat([self.buffers[idx][0], k], dim=2)
            v = torch.cat([self.buffers[idx][1], v], dim=2)
        self.buffers[idx] = (k, v)
        self.lengths[idx] = k.shape[2]
        return k, v

    def keep(self, idx, prefix, new):
        keep = torch.cat([torch.arange(prefix, device=new.device), prefix + new])
        keys, values = self.buffers[idx]
        self.buffers[idx] = (keys.index_select(2, keep), values.index_select(2, keep))
        self.lengths[idx] = keep.numel()


def use(cache_class) -> None:
    for module in USERS:
        module.LayerSkipCache = cache_class


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results/tiny", help="a model's results folder")
    parser.add_argument("--bench", default="heldout")
    parser.add_argument("--methods", nargs="+", default=["ar", "dllm", "eagle2", "eagle2_dllm"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the prompts")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    paths = results_paths(args.results)
    decode = read_json(paths["dense"].parent / "config" / "eagle.decode.json")
    models = Models.load(args.methods, paths, decode["dtype"])
    tok = models.tokenizer
    questions = load_prompts(paths["data"], args.bench)[: args.prompts]
    prompts = [torch.tensor([prompt_ids(tok, q["turns"][0])]).to(models.device) for q in questions]
    params = TreeParams.from_settings(decode)
    storages = {"preallocated": LayerSkipCache, "concatenated": ConcatCache}

    def one(method, ids, storage):
        use(storages[storage])
        return run_method(method, models, ids, args.max_new_tokens, params, tok.eos_token_id)

    for method in args.methods:  # warm-up
        for storage in storages:
            one(method, prompts[0], storage)
    result = {"results": args.results, "prompts": len(prompts), "rounds": args.rounds}
    same = True
    for method in args.methods:
        tokens = dict.fromkeys(storages, 0)
        wall = dict.fromkeys(storages, 0.0)
        for r in range(args.rounds):
            for i, ids in enumerate(prompts):
                order = list(storages) if (i + r) % 2 == 0 else list(storages)[::-1]
                outs = {}
                for storage in order:
                    res = one(method, ids, storage)
                    tokens[storage] += res.new_tokens
                    wall[storage] += res.wall_s
                    outs[storage] = res.output_ids
                same &= outs["preallocated"] == outs["concatenated"]
        tps = {s: tokens[s] / wall[s] for s in storages}
        result[method] = {
            **{f"tokens_per_s_{s}": round(v, 2) for s, v in tps.items()},
            "preallocated_over_concatenated": round(tps["preallocated"] / tps["concatenated"], 4),
        }
        print(method, result[method], flush=True)
    use(LayerSkipCache)
    result["same_outputs"] = same
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
