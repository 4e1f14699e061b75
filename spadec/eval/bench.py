"""One benchmark of one model: every configured method side by side on its prompts (first
turns), in one process, and the per-turn records the tables are computed from.

The speculative methods are compared with `ar` (the paper's baseline) in the tables; the
summary here also gives each method's speedup over its own target's plain decoding
(`eagle2_dllm` over `dllm`, `spadec_eagle2` over `dllm_robust`), which isolates the
drafting gain. That plain decoding runs whenever a method needs it as its reference.
"""

from __future__ import annotations

from pathlib import Path

from spadec.base.chat import prompt_ids
from spadec.decoding import catalog
from spadec.decoding.catalog import (
    BASELINE,
    DATA,
    artefact_path,
    is_plain,
    model_keys,
    references,
    separate_baseline,
)
from spadec.decoding.context import PromptTooLongError
from spadec.decoding.draft import TreeParams
from spadec.eval.calibrate import (
    CALIBRATION_METHOD,
    calibrate_tree,
    calibration_prompts,
    tree_candidates,
)
from spadec.eval.methods import Models
from spadec.eval.speed import run_side_by_side, summarize
from spadec.io import read_jsonl


def results_paths(results: str | Path) -> dict[str, Path]:
    """The models (by artefact key: target names, heads, predictor) and data of one
    model's results folder (results/{model}), as evaluate_bench and Models.load take them
    (`catalog.artefact_path`); the baseline D-LLM is named only when the run trained one."""
    res = Path(results)
    separate = (res / artefact_path("dllm_baseline")).is_dir()
    return {key: res / artefact_path(key) for key in (*model_keys(separate), DATA)}


def own_baselines(models: Models, methods: list[str]) -> dict[str, str]:
    """Each method's plain decoding of the same target (a plain method's: the baseline),
    for the summary."""
    refs = references({m: models.target_of(m) for m in methods})
    return {m: BASELINE if is_plain(m) else refs[m] for m in methods if m != BASELINE}


def bench_methods(speed: dict, ats_mode: str, separate: bool) -> list[str]:
    """The methods an eval_speed job runs (`catalog.bench_methods`): the configured ones,
    their fixed ATS-mode variants in the other mode when `compare_ats_modes` asks for it,
    and the plain decoding of every target they run on (each lossless method's
    reference)."""
    return catalog.bench_methods(speed["methods"], ats_mode, speed["compare_ats_modes"], separate)


def load_prompts(data_dir: str | Path, bench: str) -> list[dict]:
    """The benchmark's questions as the data stage wrote them (already capped)."""
    path = Path(data_dir) / f"eval_{bench}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such benchmark file (data.eval.{bench} in the config?)"
        )
    questions = read_jsonl(path)
    if not questions:
        raise ValueError(f"{path} has no prompts")
    return questions


def evaluate_bench(
    model_name: str,
    bench: str,
    speed: dict,
    decode: dict,
    ats: dict,
    paths: dict,
    max_prompts: int | None = None,
    medusa: dict | None = None,
) -> tuple[dict, list[dict]]:
    """(metrics, per-turn records) of one model on one benchmark.

    `speed` = eval.speed settings, `decode` = eagle.decode (dtype, tree), `ats` =
    predictor.decode; `paths` maps artefact keys (`catalog.model_keys`: dense, dllm,
    dllm_baseline, head_<target>, predictor) and `data` to directories, at least those
    the methods load (`catalog.needs`); a missing baseline D-LLM, or one equal to dllm's,
    means one D-LLM serves every method. `max_prompts` cuts the benchmark further
    (benchmarks/ sweeps); `medusa` = medusa.decode (the tree, the acceptance rule)."""
    methods = bench_methods(speed, ats["ats_mode"], separate_baseline(paths))
    models = Models.load(
        methods,
        paths,
        decode["dtype"],
        ats_mode=ats["ats_mode"],
        acc_length=ats["acc_length"],
        prune_scale=ats["prune_scale"],
        draft_vocab=decode["draft_vocab"],
        medusa_decode=medusa,
    )
    questions = load_prompts(paths[DATA], bench)[:max_prompts]
    tok = models.tokenizer
    prompts = [(str(q["id"]), prompt_ids(tok, q["turns"][0])) for q in questions]
    params = TreeParams.from_settings(decode)
    # settings of older runs lack the key
    candidates = tree_candidates(params, speed.get("tree_candidates") or [])
    # Refuse before any timing (the tree calibration's included): a prompt too long for
    # the context would otherwise stop the run at that prompt, after the methods before it
    # had run. Whichever tree the calibration picks, the prompt must fit.
    for prompt_id, ids in prompts:
        for method, tree in ((m, t) for m in methods for t in candidates):
            try:
                models.check_prompt(method, len(ids), speed["max_new_tokens"], tree)
            except PromptTooLongError as err:
                raise PromptTooLongError(f"benchmark {bench}, prompt {prompt_id}: {err}") from None
    calibration = None
    if len(candidates) > 1:
        params, calibration = calibrated_tree(models, methods, paths[DATA], speed, candidates)
    records = run_side_by_side(
        models,
        methods,
        prompts,
        params,
        speed["max_new_tokens"],
        tok.eos_token_id,
        warmup=speed["warmup_prompts"],
        temperature=speed["temperature"],
        seed=speed["seed"],
        step_timing=speed["step_timing"],
        sync_timing=speed["sync_timing"],
    )
    text = {str(q["id"]): q["turns"][0] for q in questions}
    for r in records:
        r["model"], r["bench"] = model_name, bench
        r["prompt"] = text[r["prompt_id"]]
        r["output_text"] = tok.decode(r["output_ids"], skip_special_tokens=True)
    metrics = {
        "model": model_name,
        "bench": bench,
        "prompts": len(prompts),
        "max_new_tokens": speed["max_new_tokens"],
        "temperature": speed["temperature"],
        "tree": {"total_tokens": params.total_tokens, "depth": params.depth, "top_k": params.top_k},
        "tree_calibration": calibration,
        "ats_mode": ats["ats_mode"],
        "methods": summarize(records, {m: BASELINE for m in methods if m != BASELINE}),
        "targets": {m: models.target_of(m) for m in methods},
        "vs_own_target": summarize(records, own_baselines(models, methods)),
    }
    return metrics, records


def calibrated_tree(
    models: Models,
    methods: list[str],
    data_dir: str | Path,
    speed: dict,
    candidates: list[TreeParams],
) -> tuple[TreeParams, dict]:
    """The fastest of `candidates` (`tree_candidates`: eagle's own tree and
    eval.tree_candidates) on this machine (`spadec.eval.calibrate`), with the calibration's
    record. Distillation prompts too long for some candidate are left out."""
    if CALIBRATION_METHOD not in methods:
        raise ValueError(f"eval.tree_candidates needs {CALIBRATION_METHOD} among the methods")
    tok = models.tokenizer
    prompts = [
        ids
        for ids in calibration_prompts(data_dir, tok, speed["tree_calibration_prompts"])
        if all(_fits(models, ids, speed["max_new_tokens"], tree) for tree in candidates)
    ]
    if not prompts:
        raise PromptTooLongError("no distillation prompt leaves room to calibrate the tree")
    return calibrate_tree(models, prompts, candidates, speed["max_new_tokens"], tok.eos_token_id)


def _fits(models: Models, ids: list[int], max_new_tokens: int, params: TreeParams) -> bool:
    try:
        models.check_prompt(CALIBRATION_METHOD, len(ids), max_new_tokens, params)
    except PromptTooLongError:
        return False
    return True
