"""Decoding speed of a run's methods side by side (the methods of eval.speed, or --methods).

    python benchmarks/decoding_speed.py --results results/tiny
    python benchmarks/decoding_speed.py --results results/tiny --trees 32/5/8 16/4/4 60/5/10
    python benchmarks/decoding_speed.py --results results/tiny --methods ar eagle2
    python benchmarks/decoding_speed.py --results results/tiny --prune-scales 1 1.25 1.5 \
        --methods eagle2_dllm eagle2_dllm_robust spadec_eagle2

For every tree (total_tokens/depth/top_k) and ATS prune scale the methods (spadec_eagle2 in both ATS modes,
plus the plain decoding of every target they run on) decode the same held-out prompts,
interleaved prompt by prompt after a warm-up, in this one process; the figures to read
are tau, the layer-load shares and the speedup ratios, over ar and over each method's own
target (eagle2 vs ar, eagle2_dllm vs dllm, spadec_eagle2 vs dllm_robust when the run has a
baseline D-LLM, else dllm), both as the mean of per-prompt ratios and as the ratio of
totals. Greedy outputs of the lossless methods must match their baselines; the script
exits 1 if they do not (2 if a requested method cannot run on this run's models).
(Our `ar` loop against transformers' `generate`: `ar_vs_generate.py`.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spadec.decoding.catalog import METHOD_ORDER, is_plain, method_info
from spadec.decoding.defaults import parse_tree_spec
from spadec.eval.bench import evaluate_bench, results_paths
from spadec.io import read_json
from spadec.logs import setup_logging


def speedup(vs: dict) -> str:
    return (
        f"{vs['speedup_mean_of_ratios']:.2f}x vs {vs['baseline']} "
        f"(totals {vs['speedup_ratio_of_totals']:.2f}x)"
    )


def method_line(name: str, entry: dict, own: dict | None) -> str:
    """One method's figures (only those its records carry): `entry` compares it with ar,
    `own` with its own target's plain decoding."""
    parts = [f"{entry['tokens_per_s']:.1f} tok/s"]
    if "tau" in entry:
        parts.append(f"tau {entry['tau']:.2f}")
    if "layer_load_share" in entry:
        parts.append(f"layer load {entry['layer_load_share']:.3f}")
    if "baseline" in entry:
        parts.append(speedup(entry))
    if own and own.get("baseline", "ar") != "ar":
        parts.append(speedup(own))
    if own and "baseline" in own and not is_plain(name):
        parts.append(f"same output as {own['baseline']} {own['same_output_as_baseline']:.2f}")
    return f"  {name:<22} " + ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", required=True, help="a model's results dir, e.g. results/tiny")
    parser.add_argument(
        "--trees", nargs="+", help="total_tokens/depth/top_k (default: the config's)"
    )
    parser.add_argument(
        "--methods", nargs="+", help="methods to run (default: the run's eval.speed.methods)"
    )
    parser.add_argument(
        "--prune-scales",
        nargs="+",
        type=float,
        help="ATS prune scales (predictor.decode.prune_scale; default: the run's)",
    )
    parser.add_argument(
        "--draft-vocabs",
        nargs="+",
        help="EAGLE draft vocabularies (eagle.decode.draft_vocab: a size, or 'full')",
    )
    parser.add_argument("--bench", default="heldout", help="benchmark (data/eval_<bench>.jsonl)")
    parser.add_argument("--prompts", type=int, help="prompts (default: all of the benchmark)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--json", help="write all summaries here")
    args = parser.parse_args()
    for name in args.methods or []:
        try:
            method_info(name)
        except ValueError as err:  # names the known methods
            parser.error(str(err))
    setup_logging("WARNING")
    res = Path(args.results)
    settings = read_json(res / "config" / "eagle.decode.json")
    settings.setdefault("draft_vocab", None)  # runs from before the key: the full vocabulary
    speed = read_json(res / "config" / "eval.speed.json")
    speed["compare_ats_modes"] = True
    if args.methods:
        speed["methods"] = list(args.methods)
    if args.max_new_tokens:
        speed["max_new_tokens"] = args.max_new_tokens
    speed["tree_candidates"] = []  # every tree of --trees as given: no calibration
    paths = results_paths(res)
    ats = read_json(res / "config" / "predictor.decode.json")
    ats.setdefault("prune_scale", 1.0)  # runs from before the key: the published rule
    trees = args.trees or [f"{settings['total_tokens']}/{settings['depth']}/{settings['top_k']}"]
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows, lossless = [], True
    scales = args.prune_scales or [ats["prune_scale"]]
    vocabs = [None if v == "full" else int(v) for v in args.draft_vocabs or []] or [
        settings["draft_vocab"]
    ]
    for spec, scale, vocab in ((t, x, v) for t in trees for x in scales for v in vocabs):
        try:
            total, depth, top_k = parse_tree_spec(spec)
        except ValueError as err:
            parser.error(str(err))
        s = {**settings, "total_tokens": total, "depth": depth, "top_k": top_k}
        s["draft_vocab"] = vocab
        try:
            metrics, _ = evaluate_bench(
                res.name,
                args.bench,
                speed,
                s,
                {**ats, "prune_scale": scale},
                paths,
                max_prompts=args.prompts,
            )
        except ValueError as err:  # a method whose models this run did not train
            print(f"{res}: {err}", file=sys.stderr)
            return 2
        own = metrics["vs_own_target"]
        rows.append({"tree": spec, "prune_scale": scale, "draft_vocab": vocab, **metrics})
        lossy = {"spadec_eagle2_steer"} | (
            {"spadec_eagle2"} if metrics["ats_mode"] == "steer" else set()
        )
        for method in {k for k in own if not is_plain(k)} - lossy:
            lossless &= own[method]["same_output_as_baseline"] == 1.0
        print(
            f"tree {spec} ({metrics['prompts']} prompts, ATS mode {metrics['ats_mode']},"
            f" prune scale {scale:g}, draft vocabulary {vocab or 'full'}):"
        )
        for name in sorted(metrics["methods"], key=lambda m: rank.get(m, len(rank))):
            print(method_line(name, metrics["methods"][name], own.get(name)))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not lossless:
        print("LOSSY: a speculative method's greedy output differs from its baseline")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
