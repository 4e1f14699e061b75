"""Shared fixtures. Tests run offline: no hub look-ups, ever."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SPADEC_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]
MICRO_CONFIG = REPO / "tests" / "fixtures" / "config.micro.yaml"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment (snakemake, ruff, snakefmt)."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def run(
    cmd: list[str],
    cwd: Path = REPO,
    timeout: float = 600,
    env: dict | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory) -> Path:
    """The micro config's datasets, built once per test session."""
    from spadec.config import load_yaml, resolve_stage, validate_config
    from spadec.data.prepare import prepare_data

    config = validate_config(load_yaml(MICRO_CONFIG))
    out = tmp_path_factory.mktemp("micro_data")
    prepare_data(resolve_stage(config, "micro", "data"), out, REPO / "data" / "prompts")
    return out


def micro_snakemake(workdir: Path, *args: str, config: Path = MICRO_CONFIG):
    """snakemake on the micro config in `workdir`, locally (profiles/ci)."""
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


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """The whole micro DAG run locally once per session (the end-to-end tests read it; the
    SLURM tests compare their run with it)."""
    workdir = tmp_path_factory.mktemp("e2e")
    proc = micro_snakemake(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir


@pytest.fixture(scope="session")
def micro_config() -> dict:
    from spadec.config import load_yaml, validate_config

    return validate_config(load_yaml(MICRO_CONFIG))


# How long each step of a job that kill_after_checkpoint kills lasts at least: the steps
# left after the checkpoint then take far longer than the 20 ms poll, so the kill falls
# before the job's end however fast the machine computes them.
KILLED_JOB_STEP_S = 0.25


def kill_after_checkpoint(
    cmd: list[str], state_file: Path, env: dict, timeout: float = 300
) -> None:
    """Start a training job, its steps paced (spadec.pacing), and SIGKILL it as soon as
    `state_file` (a complete checkpoint) exists."""
    import signal
    import time

    from spadec.pacing import ENV_VAR

    env = {**env, ENV_VAR: str(KILLED_JOB_STEP_S)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not state_file.exists():
        assert proc.poll() is None, "job ended before its first checkpoint"
        assert time.time() < deadline, f"no {state_file} after {timeout} s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
