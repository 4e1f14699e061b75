"""End to end on the micro config: the real workflow, then a no-op rerun, then a change."""

from __future__ import annotations

import json
import re

import pytest

import spadec  # noqa: F401  (registers the D-LLM model types for AutoModelForCausalLM)
from tests.conftest import MICRO_CONFIG, REPO, run, tool

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def snakemake(workdir, *args, config=MICRO_CONFIG):
    return run(
        [
            tool("snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(workdir),
            "--configfile",
            str(config),
            "--workflow-profile",
            str(REPO / "profiles" / "ci"),
            *args,
        ],
        timeout=900,
    )


def _jobs(dry_run_stdout: str) -> dict[str, int]:
    table = re.search(r"job\s+count\n-+\s+-+\n(.*?)\ntotal", dry_run_stdout, re.S)
    assert table, dry_run_stdout
    return {name: int(n) for name, n in (row.split() for row in table.group(1).splitlines())}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir


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
    # The trained model's cached decoding equals its full forward (skips included).
    assert dllm["cache_vs_full_same_gates"] and dllm["cache_vs_full_max_abs_diff"] < 1e-4
    final = AutoModelForCausalLM.from_pretrained(finished_run / "results" / "micro" / "dllm" / "hf")
    assert type(final).__name__ == "DLLMLlamaForCausalLM"
    info = json.loads((base / "run_info.json").read_text())
    assert info["config_hash"] and info["wall_time_s"] > 0
    assert (finished_run / "logs" / "micro" / "prepare_base.log").is_file()


def test_second_run_has_nothing_to_do(finished_run):
    proc = snakemake(finished_run, "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_one_knob_reruns_that_stage_only(finished_run, tmp_path):
    changed = tmp_path / "changed.yaml"
    changed.write_text(MICRO_CONFIG.read_text().replace("steps: 12", "steps: 13"))
    dllm_and_after = {
        "finetune_dllm": 1,
        "merge_lora": 1,
        "convert_hf": 1,
        "eval_dllm": 1,
        "all": 1,
    }
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
    assert jobs == {"stage_config": 1, **dllm_and_after}
