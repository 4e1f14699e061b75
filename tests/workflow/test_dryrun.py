"""Dry-runs of every config and profile; one-line failures on bad configs; the rule graph."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import REPO, run, tool

pytestmark = pytest.mark.workflow
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
SLURM_ENV = {
    "SPADEC_SLURM_ACCOUNT": "acct",
    "SPADEC_SLURM_PARTITION": "cpu",
    "SPADEC_SLURM_GPU_PARTITION": "gpu",
}


def snakemake(tmp_path, *args, env=None):
    return run(
        [tool("snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), *args],
        env=env,
        timeout=300,
    )


def test_default_config_dry_run(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2")
    assert proc.returncode == 0, proc.stderr
    for rule in ("prepare_data", "prepare_base", "stage_config"):
        assert rule in proc.stdout
    assert "results/tiny/base" in proc.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_dry_runs(config, tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(config))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    models = yaml.safe_load(config.read_text())["models"]
    for model in models:
        assert f"results/{model}/base" in proc.stdout


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.stem
)
def test_paper_configs_dry_run_in_smoke_mode(config, tmp_path):
    """`--config smoke=true` (spadec/smoke.py): the same DAG under `<model>-smoke` names."""
    args = ("-n", "--cores", "2", "--configfile", str(config), "--config", "smoke=true")
    proc = snakemake(tmp_path, *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for model in yaml.safe_load(config.read_text())["models"]:
        assert f"results/{model}-smoke/base" in proc.stdout
        assert f"results/{model}/" not in proc.stdout


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.stem
)
def test_slurm_profile_requests_gpus_for_gpu_rules(config, tmp_path):
    proc = snakemake(
        tmp_path,
        "-n",
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        "--configfile",
        str(config),
        env=SLURM_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = proc.stdout.split("\n\n")
    base = next(j for j in jobs if "rule prepare_base:" in j)
    assert re.search(r"\bgpu=1\b", base), base
    assert "slurm_partition=gpu" in base and "slurm_account=acct" in base
    data = next(j for j in jobs if "rule prepare_data:" in j)
    assert not re.search(r"\bgpu=", data) and "slurm_partition=cpu" in data


@pytest.mark.parametrize("profile", ["local", "ci"])
def test_other_profiles_dry_run(profile, tmp_path):
    proc = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "profiles" / profile))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_profiles_only_name_existing_rules(tmp_path):
    rules = set(snakemake(tmp_path, "--list-rules").stdout.split())
    for path in (REPO / "profiles").glob("*/config.yaml"):
        profile = yaml.safe_load(path.read_text())
        for key in ("set-resources", "set-threads"):
            unknown = set(profile.get(key, {})) - rules
            assert not unknown, f"{path}: {key} names unknown rules {unknown}"


def _one_line_failure(tmp_path, config: dict) -> str:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(cfg))
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Config error:")]
    assert len(errors) == 1, lines
    assert not (tmp_path / "results").exists(), "nothing may be written"
    return errors[0]


def test_wrong_type_fails_at_start_up_with_one_line(tmp_path):
    line = _one_line_failure(
        tmp_path, {"models": {"m": {}}, "base": {"pretrain": {"steps": "many"}}}
    )
    assert "base.pretrain.steps" in line


def test_missing_base_dir_and_dataset_fail_before_any_work(tmp_path):
    line = _one_line_failure(
        tmp_path, {"models": {"m": {"base": {"source": "hf", "path": "missing/llama"}}}}
    )
    assert "models.m.base.path" in line and "missing/llama" in line
    line = _one_line_failure(
        tmp_path,
        {
            "models": {"m": {}},
            "data": {"sft": {"source": "sharegpt", "path": "missing/sharegpt.json"}},
        },
    )
    assert "data.sft.path" in line and "missing/sharegpt.json" in line


def test_rulegraph_is_clean_dot(tmp_path):
    proc = snakemake(tmp_path, "--rulegraph")
    assert proc.returncode == 0
    assert proc.stdout.lstrip().startswith("digraph")
    for rule in ("prepare_data", "prepare_base", "all"):
        assert rule in proc.stdout
