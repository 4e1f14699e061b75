"""`run_info.json`: where an artefact came from (code, packages, device, config, time)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from spadec.config import config_hash
from spadec.io import write_json

_PACKAGES = (
    "spadec",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "datasets",
    "tokenizers",
    "safetensors",
    "snakemake",
)


def git_state(repo: Path | None = None) -> dict:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"commit": commit, "dirty": bool(dirty.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "hostname": socket.gethostname(),
    }
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    return info


class RunInfo:
    """Collects provenance for one stage run; `write()` records it with the wall time."""

    def __init__(self, stage: str, settings: dict | None = None):
        self.stage = stage
        self.settings = settings or {}
        self.start = time.time()
        self.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def as_dict(self, **extra) -> dict:
        return {
            "stage": self.stage,
            "config_hash": config_hash(self.settings),
            "settings": self.settings,
            "started_at": self.started_at,
            "wall_time_s": round(time.time() - self.start, 3),
            "argv": sys.argv,
            "git": git_state(),
            "packages": package_versions(),
            "device": device_info(),
            **extra,
        }

    def write(self, path: str | Path, **extra) -> dict:
        info = self.as_dict(**extra)
        write_json(path, info)
        return info
