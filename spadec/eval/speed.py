"""Methods side by side on the same prompts, in one process: per-turn records + summary.

Protocol (Spec-Bench's, without its defects): warm-up runs first (not recorded); per
prompt, every method runs back to back, in an order rotated from prompt to prompt so no
method always runs on a warmer cache; device syncs bracket each timed call (inside the
decoders). Speedups are computed offline from the records, both as the mean of
per-prompt ratios (the paper's definition) and as the ratio of total throughputs.

Peers (`hf_generate`, `hf_prompt_lookup`: transformers' decoders) run in the same rotation
on the same prompts; their records say whether their output equals `ar`'s
(`same_output_as_ar`). With step timing on, a tree method's record holds where its time
went (`timing`, `spadec.decoding.timing`) and the summary sums it per method.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from spadec.decoding.catalog import is_peer
from spadec.decoding.draft import TreeParams
from spadec.decoding.timing import sum_timings
from spadec.eval.memory import memory_fields
from spadec.eval.methods import Models, run_method
from spadec.logs import progress

# a sampled run's generator for prompt i is seeded with seed * stride + i: every method
# draws the same stream on a prompt, and no two (seed, prompt) pairs share one
PROMPT_SEED_STRIDE = 100_003


def run_side_by_side(
    models: Models,
    methods: Sequence[str],
    prompts: Sequence[tuple[str, list[int]]],
    params: TreeParams,
    max_new_tokens: int,
    eos_token_id: int | None,
    warmup: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
    step_timing: bool = False,
    sync_timing: bool = False,
) -> list[dict]:
    """One record per (prompt, method): ids, timings, counters and output ids
    (`step_timing`, `sync_timing`: see `run_method`)."""
    device = models.device

    def one(method, ids, prompt_idx):
        gen = torch.Generator().manual_seed(seed * PROMPT_SEED_STRIDE + prompt_idx)
        return run_method(
            method,
            models,
            ids,
            max_new_tokens,
            params,
            eos_token_id,
            temperature,
            gen,
            step_timing=step_timing,
            sync_timing=sync_timing,
        )

    for _, p in prompts[:warmup]:
        for method in methods:
            one(method, torch.tensor([p], device=device), -1)
    records = []
    for i, (prompt_id, p) in enumerate(progress(prompts, desc="side-by-side")):
        ids = torch.tensor([p], device=device)
        order = list(methods[i % len(methods) :]) + list(methods[: i % len(methods)])
        here = []
        for method in order:
            res = one(method, ids, i)
            record = {
                "prompt_id": prompt_id,
                "method": method,
                "target": models.target_of(method),
                "prompt_tokens": len(p),
                "new_tokens": res.new_tokens,
                "wall_s": res.wall_s,
                "target_forwards": res.target_forwards,
                **res.extra,
                "output_ids": res.output_ids,
            }
            here.append(record | memory_fields(models, method, record, params))
        ar = next((r["output_ids"] for r in here if r["method"] == "ar"), None)
        for r in here:
            if is_peer(r["method"]) and ar is not None:
                r["same_output_as_ar"] = r["output_ids"] == ar
        records.extend(here)
    return records


def summarize(records: list[dict], baseline: dict[str, str]) -> dict:
    """Per method: tokens/s, tau, speedup vs its baseline method (baseline[method]),
    as the mean of per-prompt ratios (with its standard deviation) and as the ratio of
    totals; plus the share of prompts whose output equals the baseline's."""
    by = {}
    for r in records:
        by.setdefault(r["method"], {})[r["prompt_id"]] = r
    out = {}
    for method, rows in by.items():
        tokens = sum(r["new_tokens"] for r in rows.values())
        wall = sum(r["wall_s"] for r in rows.values())
        forwards = sum(r["target_forwards"] for r in rows.values())
        entry = {
            "prompts": len(rows),
            "tokens_per_s": tokens / wall if wall else float("nan"),
            "tokens_per_target_forward": tokens / forwards if forwards else float("nan"),
        }
        taus = [r["tau"] for r in rows.values() if "tau" in r]
        if taus:
            entry["tau"] = statistics.fmean(taus)
        for key in ("executed_share", "layer_load_share"):
            vals = [r[key] for r in rows.values() if key in r]
            if vals:
                entry[key] = statistics.fmean(vals)
        timings = [r["timing"] for r in rows.values() if isinstance(r.get("timing"), dict)]
        if timings:  # seconds per step summed over the generations, shares of their wall
            entry["timing"] = sum_timings(timings)
        base = baseline.get(method)
        if base and base in by:
            pairs = [(r, by[base][pid]) for pid, r in rows.items() if pid in by[base]]
            ratios = [
                (r["new_tokens"] / r["wall_s"]) / (b["new_tokens"] / b["wall_s"]) for r, b in pairs
            ]
            b_tokens = sum(b["new_tokens"] for _, b in pairs)
            b_wall = sum(b["wall_s"] for _, b in pairs)
            entry["baseline"] = base
            entry["speedup_mean_of_ratios"] = statistics.fmean(ratios)
            entry["speedup_std"] = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
            entry["speedup_ratio_of_totals"] = (tokens / wall) / (b_tokens / b_wall)
            entry["same_output_as_baseline"] = statistics.fmean(
                r["output_ids"] == b["output_ids"] for r, b in pairs
            )
        out[method] = entry
    return out
