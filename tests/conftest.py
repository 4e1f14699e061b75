"""Shared fixtures. Tests run offline: no hub look-ups, ever."""

from __future__ import annotations

import contextlib
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
# Tests compare the outputs of separate runs (SLURM against local, resumed against whole).
# By default MKL's GEMM results depend on the thread count a process gets and on memory
# alignment (measured: a 37x2000 @ 2000x300 product differs between 1 and 2 threads), so
# trained weights drifted apart by ~1e-4 in about one CI run in three. Strict conditional
# numerical reproducibility makes them bitwise equal on one machine. Set before torch first
# calls MKL; subprocesses and SLURM jobs inherit it.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

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


# --- tiny models and CPU training jobs -------------------------------------------------

TINY_LLAMA = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def tiny_llama(seed: int = 0, path: Path | None = None, **config):
    """A tiny random Llama target (TINY_LLAMA, `config` on top), its weights drawn after
    torch.manual_seed(seed), in eval mode; saved to `path` when given."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **config})).eval()
    if path is not None:
        model.save_pretrained(path)
    return model


def job_env() -> dict:
    """The environment of a training job started by a test: no inherited rank variables,
    one thread, no progress bars."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "SPADEC_NO_PROGRESS": "1"}


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on `n` threads inside the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is faster on a shared 2-core box, and the subprocess runs
    (OMP_NUM_THREADS=1, job_env) then do exactly the same arithmetic as the in-process ones."""
    with torch_threads(1):
        yield


def resumes_to_reference(cmd: list[str], out: Path, ckpt: Path, ref: dict, ref_out: Path) -> None:
    """SIGKILL the training job `cmd` (writing `out`, checkpointing under `ckpt` every 5
    steps) after its first checkpoint: it leaves no output, and restarted it ends
    bit-identical to the unbroken run (metrics `ref`, output `ref_out`): the same history,
    held-out scores and weights."""
    import torch
    from safetensors.torch import load_file

    from spadec.eagle.ds_runtime import MARKER
    from spadec.io import read_json

    kill_after_checkpoint(cmd, ckpt / "step_5" / MARKER, job_env())
    assert not out.exists(), "a killed job must not leave an output"
    proc = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    assert metrics["resumed_from_step"] >= 5 and metrics["steps"] == ref["steps"]
    assert metrics["history"] == ref["history"]
    assert metrics["heldout"] == ref["heldout"]
    a, b = load_file(ref_out / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
