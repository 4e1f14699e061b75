"""Decoding speed: ar / dllm / eagle2 / eagle2_dllm / spadec_eagle2 side by side.

    python benchmarks/decoding_speed.py --results results/tiny
    python benchmarks/decoding_speed.py --results results/tiny --trees 32/5/8 16/4/4 60/5/10

For every tree (total_tokens/depth/top_k) the methods (spadec_eagle2 in both ATS modes)
decode the same held-out prompts, interleaved prompt by prompt after a warm-up, greedy, in
this one process; the figures to read are tau, the layer-load shares and the speedup
ratios over each method's own target (eagle2 vs ar, eagle2_dllm vs dllm, spadec_eagle2
vs dllm_robust when the run has a baseline D-LLM, else dllm), both as the mean of
per-prompt ratios and as the ratio of totals. Greedy outputs of the lossless methods must
match their baselines; the script exits 1 if they do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spadec.decoding.catalog import is_plain
from spadec.eval.bench import evaluate_bench, results_paths
from spadec.io import read_json
from spadec.logs import setup_logging


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", required=True, help="a model's results dir, e.g. results/tiny")
    parser.add_argument(
        "--trees", nargs="+", help="total_tokens/depth/top_k (default: the config's)"
    )
    parser.add_argument("--bench", default="heldout", help="benchmark (data/eval_<bench>.jsonl)")
    parser.add_argument("--prompts", type=int, help="prompts (default: all of the benchmark)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--json", help="write all summaries here")
    args = parser.parse_args()
    setup_logging("WARNING")
    res = Path(args.results)
    settings = read_json(res / "config" / "eagle.decode.json")
    speed = read_json(res / "config" / "eval.speed.json")
    speed["compare_ats_modes"] = True
    if args.max_new_tokens:
        speed["max_new_tokens"] = args.max_new_tokens
    paths = results_paths(res)
    ats = read_json(res / "config" / "predictor.decode.json")
    trees = args.trees or [f"{settings['total_tokens']}/{settings['depth']}/{settings['top_k']}"]
    rows, lossless = [], True
    for spec in trees:
        total, depth, top_k = (int(x) for x in spec.split("/"))
        s = {**settings, "total_tokens": total, "depth": depth, "top_k": top_k}
        metrics, _ = evaluate_bench(
            res.name, args.bench, speed, s, ats, paths, max_prompts=args.prompts
        )
        m = metrics["vs_own_target"]
        rows.append({"tree": spec, **metrics})
        lossy = {"spadec_eagle2_steer"} | (
            {"spadec_eagle2"} if metrics["ats_mode"] == "steer" else set()
        )
        for method in {k for k in m if not is_plain(k)} - lossy:
            lossless &= m[method]["same_output_as_baseline"] == 1.0
        print(
            f"tree {spec:>9}: tau eagle2 {m['eagle2']['tau']:.2f}, eagle2_dllm "
            f"{m['eagle2_dllm']['tau']:.2f} | tok/s ar {m['ar']['tokens_per_s']:.1f}, "
            f"dllm {m['dllm']['tokens_per_s']:.1f}, eagle2 {m['eagle2']['tokens_per_s']:.1f}, "
            f"eagle2_dllm {m['eagle2_dllm']['tokens_per_s']:.1f} | speedup eagle2/ar "
            f"{m['eagle2']['speedup_mean_of_ratios']:.2f}x (totals "
            f"{m['eagle2']['speedup_ratio_of_totals']:.2f}x), eagle2_dllm/dllm "
            f"{m['eagle2_dllm']['speedup_mean_of_ratios']:.2f}x (totals "
            f"{m['eagle2_dllm']['speedup_ratio_of_totals']:.2f}x), dllm/ar "
            f"{m['dllm']['speedup_mean_of_ratios']:.2f}x"
        )
        for name in sorted(k for k in m if k.startswith("spadec")):
            e = m[name]
            print(
                f"  {name}: tau {e['tau']:.2f}, {e['tokens_per_s']:.1f} tok/s, "
                f"{e['speedup_mean_of_ratios']:.2f}x vs its target's plain decoding, layer load "
                f"{e['layer_load_share']:.3f} (eagle2_dllm {m['eagle2_dllm']['layer_load_share']:.3f}), "
                f"same output as that decoding {e['same_output_as_baseline']:.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not lossless:
        print("LOSSY: a speculative method's greedy output differs from its baseline")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
