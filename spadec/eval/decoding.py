"""The decoding methods side by side on held-out prompts (first turns), greedy, in one
process: ar, dllm, eagle2, eagle2_dllm and spadec_eagle2 (in the configured ATS mode, and
the other mode as `spadec_eagle2_<mode>`, so steer's token match rate is measured)."""

from __future__ import annotations

from pathlib import Path

from spadec.base.chat import prompt_ids
from spadec.decoding.draft import TreeParams
from spadec.decoding.methods import METHODS, Models
from spadec.eval.speed import run_side_by_side, summarize
from spadec.io import read_jsonl

BASELINES = {
    "dllm": "ar",
    "eagle2": "ar",
    "eagle2_dllm": "dllm",
    "spadec_eagle2": "dllm",
    "spadec_eagle2_prune": "dllm",
    "spadec_eagle2_steer": "dllm",
}


def evaluate_decoding(
    settings: dict,
    base: str | Path,
    dllm: str | Path,
    head_dense: str | Path,
    head_dllm: str | Path,
    data_dir: str | Path,
    predictor: str | Path,
    ats: dict,
) -> tuple[dict, list[dict]]:
    """(metrics, per-turn records). `settings` = eagle.decode, `ats` = predictor.decode."""
    bench = settings["eval"]
    other = "steer" if ats["ats_mode"] == "prune" else "prune"
    methods = [*METHODS, f"spadec_eagle2_{other}"]
    models = Models.load(
        methods,
        base,
        dllm,
        head_dense,
        head_dllm,
        settings["dtype"],
        predictor=predictor,
        ats_mode=ats["ats_mode"],
        acc_length=ats["acc_length"],
    )
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
        "ats_mode": ats["ats_mode"],
        "methods": summarize(records, BASELINES),
    }
    return metrics, records
