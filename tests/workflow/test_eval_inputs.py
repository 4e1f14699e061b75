"""Rule eval_speed's inputs follow from the catalog: the models the configured methods
load (`catalog.eval_inputs`), passed to the job under their catalog options."""

from __future__ import annotations

import re

import pytest
import yaml

from spadec.config import dllm_variants, load_yaml, resolve_stage, validate_config
from spadec.decoding.catalog import artefact_option, artefact_path, bench_methods, eval_inputs
from tests.conftest import REPO, run, tool

pytestmark = pytest.mark.workflow
CONFIGS = ("results/{m}/config/eval.speed.json", "results/{m}/config/eagle.decode.json")


def _eval_job(tmp_path, config) -> tuple[set[str], str]:
    """(inputs, shell command) of the eval_speed job of model `tiny` in a dry run."""
    proc = run(
        [tool("snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)]
        + ["results/tiny/eval/heldout", "-n", "-p", "--cores", "2", "--configfile", str(config)],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    job = proc.stdout.split("rule eval_speed:", 1)[1]
    inputs = re.search(r"^\s+input: (.*)$", job, re.M).group(1).split(", ")
    shell = re.search(r"^Shell command: (.*)$", job, re.M).group(1)
    return set(inputs), shell


def _expected(config_path) -> dict[str, str]:
    """What the catalog says the job reads: key -> path."""
    config = validate_config(load_yaml(config_path))
    speed = resolve_stage(config, "tiny", "eval")
    mode = resolve_stage(config, "tiny", "predictor")["ats_mode"]
    separate = len(dllm_variants(config, "tiny")) > 1
    methods = bench_methods(speed["methods"], mode, speed["compare_ats_modes"], separate)
    return {k: f"results/tiny/{artefact_path(k)}" for k in eval_inputs(methods, separate)}


@pytest.mark.parametrize("methods", [None, ["ar", "eagle2"], ["ar", "spadec_eagle2"]])
def test_eval_speed_reads_what_the_configured_methods_load(tmp_path, methods):
    config = REPO / "config.yaml"
    if methods is not None:  # the default experiment with fewer methods
        data = yaml.safe_load(config.read_text())
        data["eval"]["methods"] = methods
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(data))
    models = _expected(config)
    inputs, shell = _eval_job(tmp_path / "run", config)
    configs = {p.format(m="tiny") for p in CONFIGS} | {
        "results/tiny/config/predictor.decode.json",
        "results/tiny/config/medusa.decode.json",
    }
    assert inputs == set(models.values()) | configs | {"results/tiny/data"}
    options = " ".join(f"{artefact_option(k)} {p}" for k, p in models.items())
    assert f" {options} --data results/tiny/data " in shell
    if methods is None:  # every model of the run: the paper's methods need them all
        assert len(models) == 11 and "--head-dllm-baseline" in shell
        assert "--medusa-dllm-baseline" in shell
    else:
        assert "results/tiny/eagle/dllm_baseline/head" not in inputs
