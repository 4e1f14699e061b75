"""Which acceptance predictor should `spadec_medusa` use: the EAGLE-trained one reused,
or one trained on Medusa tree nodes? Held-out ROC AUC on Medusa tree nodes, both ways.

    python benchmarks/medusa_predictor_auc.py --results results/tiny \\
        --heads results/tiny/medusa/dllm/heads --tree small_16 \\
        --train-prompts 40 --heldout-prompts 20 --max-new-tokens 48 \\
        --out /tmp/medusa_auc/auc.json

Node records are the predictor data's (`spadec.predictor.data`): Medusa decoding on the
D-LLM target, greedy and lossless, verified with `recording_verify_step(layer_k)`
(every token votes), each drafted node's layer-K state, draft features and whether it
ended on the accepted path. Prompts are the predictor data's: the distilled records of
the D-LLM target (`eagle/dllm/distill/distill.jsonl`, `read_distilled`). Training
prompts are the first N of them (inside the range the EAGLE predictor trained on);
held-out prompts are the M after that range (`predictor.data.prompts`), unseen by both
predictors, or with `--heldout-source eval` the first M questions of an eval benchmark
(`load_prompts`, first turns), which no trained artefact has seen.

Rows: (a) the EAGLE-trained predictor (`<results>/predictor/model`) on the held-out
Medusa nodes; (b) a predictor of the same kind trained on the training Medusa nodes
(`train_predictor` with the run's `predictor.train` settings, which also holds out its
own share of the training prompts) on the same held-out nodes; for reference (c) the
EAGLE predictor's held-out numbers from its metrics.json and (d), unless
`--no-eagle-fresh`, both predictors on EAGLE-2 nodes of the same held-out prompts.
Prints a markdown table and writes JSON to --out; the Medusa shards and the trained
predictor stay in --work (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from spadec.base.chat import prompt_ids
from spadec.decoding.catalog import PREDICTOR, artefact_path, drafter_key
from spadec.decoding.draft import TreeParams
from spadec.decoding.eagle2 import eagle2_decode
from spadec.decoding.medusa import medusa_decode
from spadec.decoding.medusa_trees import named_tree
from spadec.eagle.data import read_distilled
from spadec.eagle.head import check_head_fits, load_head
from spadec.eval.bench import load_prompts
from spadec.io import read_json, write_json
from spadec.logs import setup_logging
from spadec.medusa.heads import check_heads_fit, load_heads
from spadec.predictor.data import collect_tree_nodes, write_shard
from spadec.predictor.metrics import roc_auc
from spadec.predictor.model import check_predictor_fits, load_predictor
from spadec.predictor.train import evaluate, train_predictor
from spadec.runtime.load import load_target


def paired_bootstrap(pred_a, pred_b, data: dict, n: int = 1000, seed: int = 0) -> dict:
    """AUC(b) - AUC(a) on `data`, and its 95% interval over prompts resampled with
    replacement (both predictors scored on the same resample)."""
    with torch.no_grad():
        pa, pb = pred_a(data["features"], data["draft"]), pred_b(data["features"], data["draft"])
    labels, samples = data["labels"], data["sample"].long()
    ids = torch.unique(samples)
    rows = [torch.nonzero(samples == i)[:, 0] for i in ids.tolist()]
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(n):
        pick = torch.cat([rows[i] for i in torch.randint(len(rows), (len(rows),), generator=gen)])
        d = roc_auc(pb[pick], labels[pick]) - roc_auc(pa[pick], labels[pick])
        if not math.isnan(d):
            diffs.append(d)
    diffs.sort()
    lo, hi = diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1]
    return {
        "auc_diff": roc_auc(pb, labels) - roc_auc(pa, labels),
        "ci95": [lo, hi],
        "share_b_better": sum(d > 0 for d in diffs) / len(diffs),
        "resamples": len(diffs),
    }


def score(predictor, data: dict) -> dict:
    """train.evaluate's metrics on every node of `data` (AUC, operating points, ECE)."""
    m = evaluate(predictor, data, torch.ones(data["labels"].numel(), dtype=torch.bool))
    return {
        "nodes": m["nodes"],
        "positive_share": m["positive_share"],
        "auc": m["auc"],
        "at_tree_mean": m["at_tree_mean"],
        "ece": m["calibration"]["ece"],
    }


def node_stats(data: dict) -> dict:
    labels = data["labels"]
    trees = torch.unique(data["sample"].long() * 1_000_000 + data["step"].long()).numel()
    return {
        "prompts": int(torch.unique(data["sample"]).numel()),
        "trees": int(trees),
        "nodes": int(labels.numel()),
        "positive_share": float(labels.float().mean()),
        # accepted drafted tokens per step (root left out of the records)
        "accepted_per_tree": float(labels.sum()) / max(1, trees),
    }


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def table(rows: list[dict]) -> str:
    head = "| predictor | evaluated on | nodes | positives | AUC | prec / rec @ tree mean |"
    lines = [head, "|---|---|---:|---:|---:|---|"]
    for r in rows:
        pr = r.get("at_tree_mean")
        prt = f"{pr['precision']:.3f} / {pr['recall']:.3f}" if pr else "-"
        lines.append(
            f"| {r['predictor']} | {r['on']} | {_fmt(r.get('nodes'))} | "
            f"{_fmt(r.get('positive_share'))} | {_fmt(r.get('auc'))} | {prt} |"
        )
    return "\n".join(lines)


def heldout_prompts(args, results: Path, records: list[dict], start: int, tokenizer):
    if args.heldout_source == "eval":
        questions = load_prompts(results / artefact_path("data"), args.bench)
        if len(questions) < args.heldout_prompts:
            sys.exit(f"{args.bench}: {len(questions)} questions < --heldout-prompts")
        chosen = questions[: args.heldout_prompts]
        return [prompt_ids(tokenizer, q["turns"][0]) for q in chosen], {
            "source": f"eval_{args.bench}",
            "ids": [str(q["id"]) for q in chosen],
        }
    chosen = records[start : start + args.heldout_prompts]
    if len(chosen) < args.heldout_prompts:
        sys.exit(
            f"distill.jsonl has {len(records)} records: not {args.heldout_prompts} after the "
            f"{start} the predictor data used (try --heldout-source eval)"
        )
    return [r["prompt_ids"] for r in chosen], {
        "source": f"distill[{start}:{start + len(chosen)}]",
        "ids": [r["id"] for r in chosen],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="a model's results folder")
    p.add_argument("--heads", help="Medusa heads of the D-LLM (<results>/medusa/dllm/heads)")
    p.add_argument("--tree", default="small_16", help="Medusa tree name (medusa_trees)")
    p.add_argument("--train-prompts", type=int, default=40)
    p.add_argument("--heldout-prompts", type=int, default=20)
    p.add_argument("--heldout-source", choices=("distill", "eval"), default="distill")
    p.add_argument("--bench", default="heldout", help="eval benchmark for --heldout-source eval")
    p.add_argument("--max-new-tokens", type=int, help="default: predictor.data's")
    p.add_argument("--no-eagle-fresh", action="store_true", help="skip EAGLE-2 nodes (d)")
    p.add_argument("--work", help="keeps the Medusa shards and trained predictor")
    p.add_argument("--out", required=True, help="JSON output")
    args = p.parse_args()
    setup_logging()
    torch.manual_seed(0)

    res = Path(args.results)
    cfg = res / "config"
    data_cfg, train_cfg = (
        read_json(cfg / "predictor.data.json"),
        read_json(cfg / "predictor.train.json"),
    )
    decode_cfg = read_json(cfg / "eagle.decode.json")
    max_new = args.max_new_tokens or data_cfg["max_new_tokens"]
    target_dir = res / artefact_path("dllm")
    heads_dir = (
        Path(args.heads) if args.heads else res / artefact_path(drafter_key("medusa", "dllm"))
    )
    head_dir = res / artefact_path(drafter_key("eagle", "dllm"))
    pred_dir = res / artefact_path(PREDICTOR)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="medusa_auc_"))

    target, tokenizer = load_target(target_dir, decode_cfg["dtype"])
    device = next(target.parameters()).device
    eagle_pred = load_predictor(pred_dir, device)
    check_predictor_fits(eagle_pred, pred_dir, target, target_dir)
    layer_k = eagle_pred.layer_k
    heads = load_heads(heads_dir, target.dtype, device)
    check_heads_fit(heads, heads_dir, target, target_dir)
    tree = named_tree(args.tree)
    eos = tokenizer.eos_token_id

    # predictor_data's prompts: the D-LLM target's distilled records (rule predictor_data)
    records = read_distilled(res / "eagle" / "dllm" / "distill" / "distill.jsonl")
    used = min(data_cfg["prompts"], len(records))  # what predictor_data read
    if args.train_prompts > used:
        sys.exit(f"--train-prompts {args.train_prompts} > the {used} predictor-data prompts")
    train_ids = [r["prompt_ids"] for r in records[: args.train_prompts]]
    held_ids, held_info = heldout_prompts(args, res, records, used, tokenizer)

    def medusa(ids, *a, **kw):
        return medusa_decode(target, heads, ids, tree, *a, **kw)

    t0 = time.perf_counter()
    med_train = collect_tree_nodes(medusa, target, train_ids, layer_k, max_new, eos)
    med_held = collect_tree_nodes(medusa, target, held_ids, layer_k, max_new, eos)
    collect_s = time.perf_counter() - t0
    shard = work / "medusa_train_shard"
    write_shard(med_train, shard, {"tree": args.tree, "prompts": args.train_prompts})
    write_shard(med_held, work / "medusa_heldout_shard", {"tree": args.tree, **held_info})

    settings = {**train_cfg, "layer_k": layer_k}
    med_metrics = train_predictor(settings, [shard], work / "medusa_predictor")
    med_pred = load_predictor(work / "medusa_predictor", device)

    eagle_own = read_json(pred_dir / "metrics.json")["heldout"]
    rows = [
        {"predictor": "EAGLE-trained", "on": "Medusa held-out", **score(eagle_pred, med_held)},
        {"predictor": "Medusa-trained", "on": "Medusa held-out", **score(med_pred, med_held)},
        {
            "predictor": "Medusa-trained",
            "on": "Medusa train (own split)",
            **{k: med_metrics["heldout"][k] for k in ("nodes", "positive_share", "auc")},
            "at_tree_mean": med_metrics["heldout"]["at_tree_mean"],
        },
        {
            "predictor": "EAGLE-trained",
            "on": "EAGLE (its metrics.json)",
            **{k: eagle_own[k] for k in ("nodes", "positive_share", "auc")},
            "at_tree_mean": eagle_own["at_tree_mean"],
        },
    ]
    sets = {"medusa_train": node_stats(med_train), "medusa_heldout": node_stats(med_held)}
    if not args.no_eagle_fresh:
        head = load_head(head_dir, target.dtype, device)
        check_head_fits(head, head_dir, target, target_dir)
        params = TreeParams.from_settings(decode_cfg)

        def eagle(ids, *a, **kw):
            return eagle2_decode(target, head, ids, params, *a, **kw)

        eagle_held = collect_tree_nodes(eagle, target, held_ids, layer_k, max_new, eos)
        sets["eagle_heldout"] = node_stats(eagle_held)
        rows += [
            {"predictor": "EAGLE-trained", "on": "EAGLE held-out", **score(eagle_pred, eagle_held)},
            {"predictor": "Medusa-trained", "on": "EAGLE held-out", **score(med_pred, eagle_held)},
        ]

    print(
        f"\nMedusa tree {args.tree}, layer K {layer_k}, max_new_tokens {max_new}, "
        f"held-out: {held_info['source']}\n"
    )
    print(table(rows))
    boot = paired_bootstrap(eagle_pred, med_pred, med_held)
    print(
        f"\nMedusa-trained minus EAGLE-trained AUC on Medusa held-out: "
        f"{boot['auc_diff']:+.3f} (95% CI over prompts {boot['ci95'][0]:+.3f} .. "
        f"{boot['ci95'][1]:+.3f}; Medusa-trained better in {boot['share_b_better']:.0%})"
    )
    print("\n| node set | prompts | trees | nodes | positives | accepted / tree |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in sets.items():
        print(
            f"| {name} | {s['prompts']} | {s['trees']} | {s['nodes']} | "
            f"{s['positive_share']:.3f} | {s['accepted_per_tree']:.2f} |"
        )
    write_json(
        args.out,
        {
            "results": str(res),
            "heads": str(heads_dir),
            "tree": args.tree,
            "layer_k": layer_k,
            "max_new_tokens": max_new,
            "train_prompts": args.train_prompts,
            "heldout": {**held_info, "prompts": len(held_ids)},
            "predictor_train_settings": settings,
            "sets": sets,
            "rows": rows,
            "medusa_minus_eagle_auc": boot,
            "medusa_predictor_metrics": {k: med_metrics[k] for k in ("train", "heldout")},
            "collect_s": round(collect_s, 1),
            "work": str(work),
            "threads": os.environ.get("OMP_NUM_THREADS"),
        },
    )
    print(f"\nwrote {args.out}; shards and predictor in {work}")


if __name__ == "__main__":
    main()
