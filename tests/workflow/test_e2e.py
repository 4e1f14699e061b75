"""End to end on the micro config: the real workflow, then a no-op rerun, then a change."""

from __future__ import annotations

import json
import re

import pytest

import spadec  # noqa: F401  (registers the D-LLM model types for AutoModelForCausalLM)
from tests.conftest import MICRO_CONFIG, REPO, micro_snakemake, run, tool

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def snakemake(workdir, *args, config=MICRO_CONFIG):
    return micro_snakemake(workdir, *args, config=config)


def _jobs(dry_run_stdout: str) -> dict[str, int]:
    table = re.search(r"job\s+count\n-+\s+-+\n(.*?)\ntotal", dry_run_stdout, re.S)
    assert table, dry_run_stdout
    return {name: int(n) for name, n in (row.split() for row in table.group(1).splitlines())}


@pytest.fixture
def finished_run(micro_run):
    return micro_run


def test_outputs_exist_and_load(finished_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = finished_run / "results" / "micro" / "data"
    for name in (
        "sft.jsonl",
        "sft_heldout.jsonl",
        "corpus_train.jsonl",
        "corpus_heldout.jsonl",
        "distill_prompts.jsonl",
        "eval_heldout.jsonl",
        "metrics.json",
        "run_info.json",
    ):
        assert (data / name).is_file(), name
    base = finished_run / "results" / "micro" / "base"
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert model.config.num_hidden_layers == 8 and tokenizer.chat_template
    metrics = json.loads((base / "metrics.json").read_text())
    for key in ("heldout_ppl_chat", "unigram_ppl_chat", "greedy_tokens_per_s", "samples"):
        assert key in metrics
    dllm = json.loads((finished_run / "results" / "micro" / "dllm" / "metrics.json").read_text())
    for key in (
        "heldout_ppl_dense",
        "heldout_ppl_dllm",
        "executed_share",
        "layer_execution_rate",
        "greedy_tokens_per_s_dense",
        "greedy_tokens_per_s_dllm",
    ):
        assert key in dllm
    routing = dllm["routing"]
    assert routing["dynamic_layers"] == 6 and 0 <= routing["token_dependent_layers"] <= 6
    assert sum(routing["executed_layers_histogram"]) == routing["tokens"] > 0
    routing_png = finished_run / "results" / "micro" / "dllm" / "routing.png"
    assert routing_png.read_bytes()[:4] == b"\x89PNG"
    # The trained model's cached decoding equals its full forward (skips included).
    assert dllm["cache_vs_full_same_gates"] and dllm["cache_vs_full_max_abs_diff"] < 1e-4
    final = AutoModelForCausalLM.from_pretrained(finished_run / "results" / "micro" / "dllm" / "hf")
    assert type(final).__name__ == "DLLMLlamaForCausalLM"
    # SpaDec's D-LLM has the multi-token robust router; the baseline D-LLM (the D-LLM and
    # Eagle2+D-LLM bars) upstream's plain one, and its own evaluation
    assert final.config.router_input_bits == 4
    baseline = finished_run / "results" / "micro" / "dllm_baseline"
    assert AutoModelForCausalLM.from_pretrained(baseline / "hf").config.router_input_bits is None
    assert "heldout_ppl_dllm" in json.loads((baseline / "metrics.json").read_text())
    info = json.loads((base / "run_info.json").read_text())
    assert info["config_hash"] and info["wall_time_s"] > 0
    assert (finished_run / "logs" / "micro" / "prepare_base.log").is_file()


def test_eagle_stage_outputs(finished_run):
    from spadec.eagle.data import ShardReader
    from spadec.eagle.head import load_head
    from spadec.medusa.heads import load_heads

    eagle = finished_run / "results" / "micro" / "eagle"
    for target in ("dense", "dllm", "dllm_baseline"):
        distilled = (eagle / target / "distill" / "distill.jsonl").read_text().splitlines()
        assert len(distilled) == 16  # every distill prompt answered by the target itself
        shards = [eagle / target / "data" / f"shard_{i}" for i in range(2)]
        assert len(ShardReader(shards)) == 16
        head = load_head(eagle / target / "head")
        assert head.config.num_hidden_layers == 1
        metrics = json.loads((eagle / target / "head" / "metrics.json").read_text())
        assert 0 <= metrics["heldout_top1"] <= metrics["heldout_top3"] <= 1
    medusa = finished_run / "results" / "micro" / "medusa"
    for target in ("dense", "dllm", "dllm_baseline"):
        heads = load_heads(medusa / target / "heads")
        assert heads.config.num_heads == 4
        metrics = json.loads((medusa / target / "heads" / "metrics.json").read_text())
        assert len(metrics["heldout_top1"]) == 4
        assert all(0 <= t1 <= t5 <= 1 for t1, t5 in zip(*_top(metrics), strict=True))
    for predictor in ("predictor", "predictor_medusa"):  # one per drafter kind
        folder = finished_run / "results" / "micro" / predictor
        pm = json.loads((folder / "model" / "metrics.json").read_text())
        assert pm["layer_k"] == 2 and 0 <= pm["train"]["auc"] <= 1
    evals = finished_run / "results" / "micro" / "eval" / "heldout"
    metrics = json.loads((evals / "metrics.json").read_text())
    bench = metrics["vs_own_target"]
    assert set(bench) == {
        "ar",
        "dllm",
        "dllm_robust",  # added as spadec_eagle2's lossless reference
        "eagle2",
        "eagle2_dllm",
        "eagle2_dllm_robust",
        "spadec_eagle2",
        "spadec_eagle2_steer",
        "medusa",
        "medusa_dllm",
        "spadec_medusa",
        "spadec_medusa_steer",
    }
    assert metrics["targets"]["eagle2_dllm"] == "dllm_baseline"
    assert metrics["targets"]["spadec_eagle2"] == "dllm"
    assert metrics["targets"]["medusa_dllm"] == "dllm_baseline"
    # greedy speculative decoding is lossless on the trained micro models (prune mode
    # too), each against the plain decoding of its own target
    lossless = ("eagle2", "eagle2_dllm", "eagle2_dllm_robust", "spadec_eagle2")
    for method in (*lossless, "medusa", "medusa_dllm", "spadec_medusa"):
        assert bench[method]["same_output_as_baseline"] == 1.0, method
    records = [json.loads(line) for line in (evals / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 12  # 2 prompts x 12 methods, one record per turn
    assert {r["model"] for r in records} == {"micro"} and all("output_text" in r for r in records)


def test_tables_figures_and_report(finished_run):
    import pandas as pd

    tables = finished_run / "results" / "tables"
    speed = pd.read_csv(tables / "speedup.csv").set_index("method")
    assert len(speed) == 12 and set(speed["model"]) == {"micro"}
    assert speed.loc["ar", "speedup"] == pytest.approx(1.0)
    assert (speed["speedup"] > 0).all() and (speed["prompts"] == 2).all()
    assert speed.loc["eagle2", "tau"] >= 1.0
    quality = pd.read_csv(tables / "quality.csv").set_index("method")
    for method in ("eagle2", "eagle2_dllm", "spadec_eagle2", "medusa", "spadec_medusa"):
        assert quality.loc[method, "exact_reference"] == 1.0, method
    assert quality.loc["spadec_eagle2", "reference"] == "dllm_robust"
    assert quality.loc["eagle2_dllm", "reference"] == "dllm"
    assert "| micro | heldout |" in (tables / "speedup.md").read_text()
    assert r"\begin{tabular}" in (tables / "speedup.tex").read_text()
    assert (tables / "responses.md").read_text().count("| micro | heldout |") == 2
    run_info = json.loads((tables / "run_info.json").read_text())
    assert run_info["records"][0]["records"] == 24
    ablation = pd.read_csv(tables / "ablation.csv").set_index("method")
    assert list(ablation.index) == [  # per drafter kind: EAGLE-2's trees, then Medusa's
        "eagle2_dllm",
        "eagle2_dllm_robust",
        "spadec_eagle2",
        "spadec_eagle2_steer",
        "medusa_dllm",
        "spadec_medusa",
        "spadec_medusa_steer",
    ]
    assert ablation.loc["spadec_medusa", "drafter"] == "Medusa heads"
    assert ablation.loc["spadec_eagle2", "verification"] == "ATS prune"
    assert ablation.loc["eagle2_dllm_robust", "lossless"] == "100%"
    assert ablation["tree_router_split_rate"].between(0, 1).all()
    for name in ("speedup.png", "quality.png", "layer_load.png"):
        assert (finished_run / "results" / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    report = finished_run / "report.html"
    proc = snakemake(finished_run, "--report", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text(encoding="utf-8")
    assert "speedup.png" in html and "tables" in html


def test_second_run_has_nothing_to_do(finished_run):
    proc = snakemake(finished_run, "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_one_knob_reruns_that_stage_only(finished_run, tmp_path):
    changed = tmp_path / "changed.yaml"
    changed.write_text(MICRO_CONFIG.read_text().replace("steps: 12", "steps: 13"))
    evaluation = {"eval_speed": 1, "tables": 1}
    # two predictors (EAGLE's trees, Medusa's) of 2 shards each
    predictor_and_eval = {"predictor_data": 4, "train_predictor": 2, **evaluation}
    eagle_predictor_and_eval = {"predictor_data": 2, "train_predictor": 1, **evaluation}
    # three targets: dense, SpaDec's D-LLM and the baseline D-LLM
    drafters_on_all = {"distill": 3, "eagle_data": 6, "train_eagle": 3, "train_medusa": 3}
    eagle_on_all = {**drafters_on_all, **predictor_and_eval}
    both_dllms = {"finetune_dllm": 2, "merge_lora": 2, "convert_hf": 2, "eval_dllm": 2}
    dllm_and_after = {**both_dllms, "all": 1, **eagle_on_all}
    jobs = _jobs(snakemake(finished_run, "-n", config=changed).stdout)
    assert jobs == {"stage_config": 1, "prepare_base": 1, **dllm_and_after}
    data_change = tmp_path / "data.yaml"
    data_change.write_text(
        MICRO_CONFIG.read_text().replace(
            "distill_prompts:\n    n: 16", "distill_prompts:\n    n: 17"
        )
    )
    jobs = _jobs(snakemake(finished_run, "-n", config=data_change).stdout)
    assert jobs == {"stage_config": 1, "prepare_data": 1, "prepare_base": 1, **dllm_and_after}
    dllm_change = tmp_path / "dllm.yaml"
    dllm_change.write_text(
        MICRO_CONFIG.read_text().replace("router_hidden: 16", "router_hidden: 12")
    )
    jobs = _jobs(snakemake(finished_run, "-n", config=dllm_change).stdout)
    # the dense target's EAGLE head does not depend on the D-LLMs
    eagle_on_dllms = {"distill": 2, "eagle_data": 4, "train_eagle": 2, "train_medusa": 2}
    eagle_on_dllms.update(predictor_and_eval)
    assert jobs == {"stage_config": 2, **both_dllms, "all": 1, **eagle_on_dllms}
    # the baseline's router input reruns the baseline D-LLM and its head, not SpaDec's
    # D-LLM nor the predictor trained on it
    baseline_change = tmp_path / "baseline.yaml"
    baseline_change.write_text(
        MICRO_CONFIG.read_text().replace(
            "router_hidden: 16", "router_hidden: 16\n  baseline_router_input_bits: 8"
        )
    )
    jobs = _jobs(snakemake(finished_run, "-n", config=baseline_change).stdout)
    one_dllm = {"finetune_dllm": 1, "merge_lora": 1, "convert_hf": 1, "eval_dllm": 1}
    eagle_on_one = {"distill": 1, "eagle_data": 2, "train_eagle": 1, "train_medusa": 1}
    assert jobs == {"stage_config": 1, **one_dllm, **eagle_on_one, **evaluation, "all": 1}
    # with equal router inputs one D-LLM serves every method: only the evaluation reruns
    one_change = tmp_path / "one.yaml"
    one_change.write_text(
        MICRO_CONFIG.read_text().replace(
            "router_hidden: 16", "router_hidden: 16\n  baseline_router_input_bits: 4"
        )
    )
    jobs = _jobs(snakemake(finished_run, "-n", config=one_change).stdout)
    assert jobs == {**evaluation, "all": 1}
    # EAGLE knobs rerun only the rules that read them (per-part settings files).
    train_change = tmp_path / "train.yaml"
    train_change.write_text(MICRO_CONFIG.read_text().replace("lr: 1.0e-2", "lr: 2.0e-2", 1))
    jobs = _jobs(snakemake(finished_run, "-n", config=train_change).stdout)
    assert jobs == {"stage_config": 1, "train_eagle": 3, **eagle_predictor_and_eval, "all": 1}
    # Medusa's tree reruns its predictor's data and the evaluation, not the heads
    medusa_change = tmp_path / "medusa.yaml"
    medusa_change.write_text(MICRO_CONFIG.read_text().replace("tree: small_10", "tree: chain_4"))
    jobs = _jobs(snakemake(finished_run, "-n", config=medusa_change).stdout)
    assert jobs == {"stage_config": 1, **eagle_predictor_and_eval, "all": 1}
    tree_change = tmp_path / "tree.yaml"
    tree_change.write_text(MICRO_CONFIG.read_text().replace("top_k: 2", "top_k: 3"))
    jobs = _jobs(snakemake(finished_run, "-n", config=tree_change).stdout)
    # the tree shapes the predictor's data too
    assert jobs == {"stage_config": 1, **predictor_and_eval, "all": 1}
    ats_change = tmp_path / "ats.yaml"
    ats_change.write_text(
        MICRO_CONFIG.read_text().replace("layer_k: 2", "layer_k: 2\n  ats_mode: steer")
    )
    jobs = _jobs(snakemake(finished_run, "-n", config=ats_change).stdout)
    assert jobs == {"stage_config": 1, **evaluation, "all": 1}
    eval_change = tmp_path / "eval.yaml"
    eval_change.write_text(
        MICRO_CONFIG.read_text().replace(
            "max_new_tokens: 12\n  warmup", "max_new_tokens: 10\n  warmup"
        )
    )
    jobs = _jobs(snakemake(finished_run, "-n", config=eval_change).stdout)
    assert jobs == {"stage_config": 1, **evaluation, "all": 1}
    examples_change = tmp_path / "examples.yaml"
    examples_change.write_text(
        MICRO_CONFIG.read_text().replace("response_examples: 2", "response_examples: 1")
    )
    jobs = _jobs(snakemake(finished_run, "-n", config=examples_change).stdout)
    assert jobs == {"stage_config": 1, "tables": 1, "all": 1}


@pytest.mark.parametrize(
    "method", ["ar", "eagle2", "eagle2_dllm", "spadec_eagle2", "medusa", "spadec_medusa"]
)
def test_spadec_generate_prints_the_counters(finished_run, method):
    import sys

    proc = run(
        [
            sys.executable,
            "-m",
            "spadec.cli",
            "generate",
            "--results",
            str(finished_run / "results" / "micro"),
            "--method",
            method,
            "--prompt",
            "What does the function `os.getcwd` do?",
            "--max-new-tokens",
            "12",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens/s" in proc.stderr
    if method != "ar":
        assert "tau" in proc.stderr and "accepted drafts per step" in proc.stderr


def test_reference_export_is_small_and_compares_with_its_run(finished_run, tmp_path):
    import sys

    ref = tmp_path / "reference"
    export = [sys.executable, str(REPO / "scripts" / "export_reference.py")]
    proc = run([*export, "--workdir", str(finished_run), "--out", str(ref)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in (
        "tables/speedup.csv",
        "figures/speedup.png",
        "micro/config/eval.speed.json",
        "micro/eval/heldout/records.jsonl",
        "micro/predictor/model/metrics.json",
        "timings.tsv",
    ):
        assert (ref / rel).is_file(), rel
    assert not list(ref.rglob("*.safetensors"))
    assert "train_eagle_dense" in (ref / "timings.tsv").read_text()
    cmd = [sys.executable, "-m", "spadec.cli", "compare", str(finished_run / "results"), str(ref)]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| micro | heldout | spadec_eagle2 |" in proc.stdout
    assert "No differences in the resolved stage settings" in proc.stdout


def test_a_moved_checkout_reruns_nothing(tmp_path):
    """Run from a checkout, then move the checkout (results and .snakemake with it): no
    param or input names the checkout's absolute path, so Snakemake has nothing to redo."""
    import shutil
    import subprocess

    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    first = tmp_path / "first"
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (first / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, first / rel)
    base = [tool("snakemake"), "--configfile", "tests/fixtures/config.micro.yaml"]
    base += ["--workflow-profile", "profiles/ci", "--until", "prepare_base"]
    proc = run(base, cwd=first, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    moved = first.rename(tmp_path / "moved")
    proc = run([*base, "-n"], cwd=moved)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^total\s+0$", proc.stdout, re.M), proc.stdout[-3000:]


def _top(metrics: dict) -> tuple[list[float], list[float]]:
    """A Medusa heads' held-out top-1 and top-5 per head."""
    return metrics["heldout_top1"], metrics["heldout_top5"]
