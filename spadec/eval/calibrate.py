"""The EAGLE tree from the machine: decode a few training prompts with `eagle2` on every
candidate tree, beside `ar`, and keep the tree with the highest measured speedup.

On a CPU the cost of verifying N tree tokens is a step function of N that depends on the
BLAS kernels (benchmarks/verify_cost.py: on this project's 2-core machine, SmolLM2-135M in
fp32 verifies 3 tokens for 1.12 `ar` steps and 4 for 1.52), and what a tree buys depends
on how well the head drafts. Timing whole generations measures both at once. The prompts
are the distillation prompts (the head's training questions, never a benchmark's), so
the choice does not peek at the prompts it is then scored on.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from spadec.base.chat import prompt_ids
from spadec.decoding.defaults import parse_tree_spec
from spadec.decoding.draft import TreeParams
from spadec.eval.methods import Models, run_method
from spadec.io import read_jsonl
from spadec.logs import progress

CALIBRATION_METHOD = "eagle2"  # the tree is chosen for EAGLE drafting on the dense target
CALIBRATION_PROMPTS_FILE = "distill_prompts.jsonl"


def parse_tree(text: str) -> TreeParams:
    """ "total_tokens/depth/top_k" -> TreeParams (ValueError naming the text if malformed)."""
    return TreeParams(*parse_tree_spec(text))


def tree_name(params: TreeParams) -> str:
    return f"{params.total_tokens}/{params.depth}/{params.top_k}"


def tree_candidates(configured: TreeParams, texts: list[str]) -> list[TreeParams]:
    """The trees a calibration times: the configured one first, then `texts` (eval's
    tree_candidates) not already listed."""
    candidates = [configured]
    for text in texts:
        tree = parse_tree(text)
        if tree not in candidates:
            candidates.append(tree)
    return candidates


def calibration_prompts(data_dir: str | Path, tokenizer, count: int) -> list[list[int]]:
    """The first `count` distillation prompts as chat-formatted ids."""
    path = Path(data_dir) / CALIBRATION_PROMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no distillation prompts to calibrate the tree on")
    rows = read_jsonl(path)[:count]
    if not rows:
        raise ValueError(f"{path} has no prompts")
    return [prompt_ids(tokenizer, row["instruction"]) for row in rows]


def calibrate_tree(
    models: Models,
    prompts: list[list[int]],
    candidates: list[TreeParams],
    max_new_tokens: int,
    eos_token_id: int | None,
) -> tuple[TreeParams, dict]:
    """(the fastest candidate, the record of the calibration). Per prompt, `ar` and every
    candidate run back to back (greedy), after one warm-up round; a candidate's speedup is
    its total tokens/s over `ar`'s on the same prompts."""

    def timed(method: str, ids: list[int], params: TreeParams) -> tuple[float, int, float]:
        input_ids = torch.tensor([ids], device=models.device)
        start = time.perf_counter()
        result = run_method(method, models, input_ids, max_new_tokens, params, eos_token_id)
        tau = result.extra.get("tau", 1.0)
        return time.perf_counter() - start, result.new_tokens, tau

    for params in candidates:  # warm-up: first calls allocate caches and pick kernels
        timed(CALIBRATION_METHOD, prompts[0], params)
    timed("ar", prompts[0], candidates[0])
    ar_time, ar_tokens = 0.0, 0
    seconds = [0.0] * len(candidates)
    tokens = [0] * len(candidates)
    taus: list[list[float]] = [[] for _ in candidates]
    for ids in progress(prompts, desc="tree calibration", unit="prompt"):
        t, n, _ = timed("ar", ids, candidates[0])
        ar_time, ar_tokens = ar_time + t, ar_tokens + n
        for i, params in enumerate(candidates):
            t, n, tau = timed(CALIBRATION_METHOD, ids, params)
            seconds[i], tokens[i] = seconds[i] + t, tokens[i] + n
            taus[i].append(tau)
    ar_rate = ar_tokens / ar_time
    rows = [
        {
            "tree": tree_name(params),
            "tau": sum(taus[i]) / len(taus[i]),
            "tokens_per_s": tokens[i] / seconds[i],
            "speedup": tokens[i] / seconds[i] / ar_rate,
        }
        for i, params in enumerate(candidates)
    ]
    best = max(range(len(candidates)), key=lambda i: rows[i]["speedup"])
    record = {
        "method": CALIBRATION_METHOD,
        "prompts": len(prompts),
        "source": CALIBRATION_PROMPTS_FILE,
        "max_new_tokens": max_new_tokens,
        "ar_tokens_per_s": ar_rate,
        "candidates": rows,
        "chosen": rows[best]["tree"],
    }
    return candidates[best], record
