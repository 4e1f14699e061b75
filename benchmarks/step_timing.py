"""Where a speculative method's time goes, and what measuring it costs.

    python benchmarks/step_timing.py --results results/tiny --prompts 8 --rounds 3
    python benchmarks/step_timing.py --results results/tiny --methods eagle2 --sync

For each tree method, the same held-out prompts are decoded with step timing off and on,
alternating (off/on, then on/off) prompt by prompt, in this one process, after a warm-up:
the instrumentation's cost is the ratio of the total tokens/s (off over on, minus one).
The timed runs' parts (draft, verify — SpaDec's split into its first K layers, predictor +
ATS and the rest —, accept, commit, host) are summed per method and printed as seconds and
shares of the wall time. Greedy outputs with and without timing must be identical.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from spadec.base.chat import prompt_ids
from spadec.decoding.draft import TreeParams
from spadec.decoding.timing import sum_timings
from spadec.eval.bench import load_prompts, results_paths
from spadec.eval.methods import Models, run_method
from spadec.io import read_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results/tiny", help="a model's results folder")
    parser.add_argument("--bench", default="heldout")
    parser.add_argument("--methods", nargs="+", default=["eagle2", "spadec_eagle2"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the prompts")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--sync", action="store_true", help="CUDA sync at every boundary")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    paths = results_paths(args.results)
    config = paths["dense"].parent / "config"
    decode = read_json(config / "eagle.decode.json")
    ats = read_json(config / "predictor.decode.json")
    models = Models.load(
        args.methods, paths, decode["dtype"], ats_mode=ats["ats_mode"], acc_length=ats["acc_length"]
    )
    tok = models.tokenizer
    questions = load_prompts(paths["data"], args.bench)[: args.prompts]
    prompts = [torch.tensor([prompt_ids(tok, q["turns"][0])]) for q in questions]
    prompts = [p.to(models.device) for p in prompts]
    params = TreeParams.from_settings(decode)

    def one(method, ids, timing):
        return run_method(
            method,
            models,
            ids,
            args.max_new_tokens,
            params,
            tok.eos_token_id,
            step_timing=timing,
            sync_timing=args.sync,
        )

    for method in args.methods:  # warm-up
        one(method, prompts[0], False)
        one(method, prompts[0], True)
    result = {"results": args.results, "prompts": len(prompts), "rounds": args.rounds}
    same = True
    for method in args.methods:
        tokens = {False: 0, True: 0}
        wall = {False: 0.0, True: 0.0}
        timings = []
        for r in range(args.rounds):
            for i, ids in enumerate(prompts):
                order = (False, True) if (i + r) % 2 == 0 else (True, False)
                outs = {}
                for timing in order:
                    res = one(method, ids, timing)
                    tokens[timing] += res.new_tokens
                    wall[timing] += res.wall_s
                    outs[timing] = res.output_ids
                    if timing:
                        timings.append(res.extra["timing"])
                same &= outs[False] == outs[True]
        off, on = tokens[False] / wall[False], tokens[True] / wall[True]
        total = sum_timings(timings)
        result[method] = {
            "tokens_per_s_off": round(off, 2),
            "tokens_per_s_on": round(on, 2),
            "overhead_pct": round(100 * (off / on - 1), 2),
            "seconds": {k: round(v, 4) for k, v in total.items() if k.endswith("_s")},
            "shares": {k: round(v, 4) for k, v in total["shares"].items()},
        }
    result["same_output_with_and_without_timing"] = same
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
