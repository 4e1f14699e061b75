"""The EAGLE stage's own benchmark: ar, dllm, eagle2, eagle2_dllm side by side on
held-out prompts (first turns), greedy, in one process."""

from __future__ import annotations

from pathlib import Path

from spadec.base.chat import prompt_ids
from spadec.decoding.draft import TreeParams
from spadec.decoding.methods import METHODS, Models
from spadec.eval.speed import run_side_by_side, summarize
from spadec.io import read_jsonl

BASELINES = {"dllm": "ar", "eagle2": "ar", "eagle2_dllm": "dllm"}


def evaluate_eagle(
    settings: dict,
    base: str | Path,
    dllm: str | Path,
    head_dense: str | Path,
    head_dllm: str | Path,
    data_dir: str | Path,
) -> tuple[dict, list[dict]]:
    """(metrics, per-turn records)."""
    bench = settings["eval"]
    methods = list(METHODS)
    models = Models.load(methods, base, dllm, head_dense, head_dllm, settings["dtype"])
    questions = read_jsonl(Path(data_dir) / f"eval_{bench['bench']}.jsonl")
    questions = questions[: bench["max_prompts"]]
    if not questions:
        raise ValueError(f"{data_dir}/eval_{bench['bench']}.jsonl has no prompts")
    tok = models.tokenizer
    prompts = [(str(q["id"]), prompt_ids(tok, q["turns"][0])) for q in questions]
    params = TreeParams.from_settings(settings)
    records = run_side_by_side(
        models,
        methods,
        prompts,
        params,
        bench["max_new_tokens"],
        tok.eos_token_id,
        warmup=bench["warmup_prompts"],
        seed=settings["seed"],
    )
    metrics = {
        "bench": bench["bench"],
        "prompts": len(prompts),
        "max_new_tokens": bench["max_new_tokens"],
        "tree": {"total_tokens": params.total_tokens, "depth": params.depth, "top_k": params.top_k},
        "methods": summarize(records, BASELINES),
    }
    return metrics, records
