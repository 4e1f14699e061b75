"""Resumable training state, kept outside the declared outputs (under ckpt/).

A checkpoint is a folder `step_<n>/` with the model's trainable tensors (safetensors),
the optimizer state (loaded with `weights_only=True`: no pickle is executed) and
`state.json`, written last and atomically: a folder without it is incomplete and
ignored. Each checkpoint records the hash of the stage settings; a run resumes only
from a checkpoint with the same hash, so a changed hyper-parameter starts afresh.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spadec.io import atomic_dir, write_json

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict

    def model_state(self) -> dict[str, torch.Tensor]:
        return load_file(self.path / "model.safetensors")

    def optimizer_state(self) -> dict:
        return torch.load(self.path / "optimizer.pt", map_location="cpu", weights_only=True)


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    settings_hash: str,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    ckpt_dir = Path(ckpt_dir)
    target = ckpt_dir / f"step_{step}"
    with atomic_dir(target) as tmp:
        # clone(): tied weights (embedding = LM head) share storage, which safetensors refuses.
        save_file(
            {k: v.detach().cpu().clone().contiguous() for k, v in model_state.items()},
            tmp / "model.safetensors",
        )
        torch.save(optimizer_state, tmp / "optimizer.pt")
        write_json(
            tmp / "state.json", {"step": step, "settings_hash": settings_hash, **(extra or {})}
        )
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return target


def list_checkpoints(ckpt_dir: str | Path, settings_hash: str | None = None) -> list[Checkpoint]:
    """Complete checkpoints in `ckpt_dir`, oldest first (optionally only those with `settings_hash`)."""
    ckpt_dir = Path(ckpt_dir)
    found = []
    if not ckpt_dir.is_dir():
        return found
    for sub in ckpt_dir.iterdir():
        match = _STEP_DIR.match(sub.name)
        state_file = sub / "state.json"
        if not (match and sub.is_dir() and state_file.is_file()):
            continue
        try:
            state = json.loads(state_file.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring checkpoint with unreadable state.json: %s", sub)
            continue
        if settings_hash is not None and state.get("settings_hash") != settings_hash:
            continue
        found.append(Checkpoint(sub, int(match.group(1)), state))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(ckpt_dir: str | Path, settings_hash: str) -> Checkpoint | None:
    ckpts = list_checkpoints(ckpt_dir, settings_hash)
    stale = [c for c in list_checkpoints(ckpt_dir) if c.state.get("settings_hash") != settings_hash]
    if stale:
        log.info("ignoring %d checkpoint(s) from other settings in %s", len(stale), ckpt_dir)
    return ckpts[-1] if ckpts else None
