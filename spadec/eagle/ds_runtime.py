"""DeepSpeed and torch.distributed plumbing of the EAGLE trainer: the DeepSpeed config,
the process group, the collectives it needs, and checkpoint saving and resuming.

The config is configs/deepspeed/zero2.json with every "auto" filled from the settings;
DeepSpeed gets the head, its trainable parameters and a torch AdamW (no JIT-built fused
optimizer). Checkpoints are DeepSpeed's own (`ckpt_dir/step_<n>/`, one optimizer shard
per rank); `spadec_state.json`, written by rank 0 after every rank finished saving,
marks one complete and records the settings hash and world size a resume must match.
DeepSpeed's own loader unpickles (weights_only=False); we load its files with
weights_only=True instead (spadec.eagle.ds_safe_load), so no pickle code ever runs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from spadec.eagle.ds_safe_load import weights_only_checkpoint_loads
from spadec.io import write_json

log = logging.getLogger(__name__)

MARKER = "spadec_state.json"
KEEP_CHECKPOINTS = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


class EagleTrainError(ValueError):
    """Settings, target or DeepSpeed config the trainer cannot work with."""


# ----------------------------------------------------------------------------- DeepSpeed


def deepspeed_config(template: dict, settings: dict, total_steps: int, warmup: int) -> dict:
    """The DeepSpeed config: `template` with its "auto" fields filled from `settings`."""
    if "optimizer" in template:
        raise EagleTrainError(
            "the DeepSpeed config must not have an 'optimizer' section: "
            "the trainer passes its own torch AdamW"
        )
    if "train_batch_size" in template:
        raise EagleTrainError(
            "the DeepSpeed config must not set train_batch_size: it follows from "
            "micro_batch * grad_accum * world size"
        )
    cfg = _drop_private(copy.deepcopy(template))
    precision = settings["train_precision"]
    cfg["train_micro_batch_size_per_gpu"] = settings["micro_batch"]
    cfg["gradient_accumulation_steps"] = settings["grad_accum"]
    cfg["gradient_clipping"] = settings["grad_clip"]
    cfg.setdefault("bf16", {})["enabled"] = precision == "bf16"
    cfg.setdefault("fp16", {})["enabled"] = precision == "fp16"
    scheduler = cfg.get("scheduler", {}).get("params")
    if scheduler is not None:
        fill = {
            "warmup_max_lr": settings["lr"],
            "warmup_num_steps": warmup,
            "total_num_steps": total_steps,
        }
        for key, value in fill.items():
            if scheduler.get(key) == "auto":
                scheduler[key] = value
    left = _auto_paths(cfg)
    if left:
        raise EagleTrainError(f"DeepSpeed config: no value for 'auto' at {', '.join(left)}")
    return cfg


def _drop_private(obj):
    if isinstance(obj, dict):
        return {k: _drop_private(v) for k, v in obj.items() if not k.startswith("_")}
    return obj


def _auto_paths(obj, prefix: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _auto_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if obj == "auto" else []


@contextlib.contextmanager
def distributed():
    """torch.distributed through DeepSpeed; a plain `python` run becomes a world of one.

    Launchers set RANK/WORLD_SIZE/...; without them the defaults are set here (a free
    port, never a fixed one) and removed again on exit, so a caller (a test process)
    does not hand them on to its children. The process group itself stays: DeepSpeed
    caches groups module-wide, and a second call in the same process reuses it.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from spadec.launch import free_port

    if get_accelerator().device_name() == "cpu":
        # DeepSpeed would JIT-compile its shared-memory allreduce (~34 s) on every cold
        # CPU start; gloo does the few collectives a head needs just as well.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        local = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)
        if local > 1 and "OMP_NUM_THREADS" not in os.environ:
            # N ranks with all cores each oversubscribe the CPU (measured: 20x slower
            # steps with 2 ranks on 2 cores); share the cores as torchrun does.
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))
    added = []
    if "RANK" not in os.environ:
        defaults = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
        }
        added = [k for k in _DIST_ENV if k not in os.environ]
        os.environ.update({k: defaults[k] for k in added})
    try:
        # auto_mpi_discovery off: the variables are set, an MPI probe would only fail.
        deepspeed.init_distributed(auto_mpi_discovery=False)
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def barrier() -> None:
    torch.distributed.barrier()


def all_sum(values: list[float], device) -> list[float]:
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(buf)
    return buf.tolist()


# ----------------------------------------------------------------------------- checkpoints


def find_checkpoint(
    ckpt_dir: str | Path, settings_hash: str, world: int, verbose: bool = True
) -> dict | None:
    """The newest complete checkpoint of these settings and world size (its marker), or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found, ignored = [], []
    for sub in sorted(ckpt_dir.iterdir()):
        match = _STEP_DIR.match(sub.name)
        if not (match and sub.is_dir()):
            continue
        marker = sub / MARKER
        if not marker.is_file():
            ignored.append(f"{sub.name} (incomplete)")
            continue
        try:
            state = json.loads(marker.read_text())
        except json.JSONDecodeError:
            ignored.append(f"{sub.name} (unreadable {MARKER})")
            continue
        if state.get("settings_hash") != settings_hash:
            ignored.append(f"{sub.name} (other settings)")
        elif state.get("world_size") != world:
            # ZeRO-2 optimizer shards and the rank slicing of batches both follow the world.
            ignored.append(f"{sub.name} (world size {state.get('world_size')}, now {world})")
        else:
            found.append({**state, "tag": sub.name, "step": int(match.group(1))})
    if ignored and verbose:
        log.info("ignoring checkpoint(s) in %s: %s", ckpt_dir, ", ".join(ignored))
    return max(found, key=lambda s: s["step"]) if found else None


def _prune(ckpt_dir: Path, settings_hash: str, world: int, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints of this run; drop every other step_*."""
    mine = []
    for sub in ckpt_dir.iterdir():
        match = _STEP_DIR.match(sub.name)
        if not (match and sub.is_dir()):
            continue
        try:
            state = json.loads((sub / MARKER).read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        ok = state.get("settings_hash") == settings_hash and state.get("world_size") == world
        mine.append((ok, int(match.group(1)), sub))
    kept = {sub for _, _, sub in sorted(m for m in mine if m[0])[-keep:]}
    for _, _, sub in mine:
        if sub not in kept:
            shutil.rmtree(sub, ignore_errors=True)


def save(engine, ckpt_dir: Path, step: int, state: dict, rank: int) -> None:
    tag = f"step_{step}"
    if rank == 0:
        # A leftover folder of that name (other settings) must not lend its marker to a
        # half-written save of ours.
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    barrier()
    # save_latest=False: resume reads the markers, never DeepSpeed's `latest` file, which
    # would name a checkpoint before its marker exists.
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    # save_checkpoint (torch checkpoint engine, not a decoupled/async one) ends in a
    # barrier already; this one keeps the marker's guarantee if that ever changes.
    barrier()
    if rank == 0:
        write_json(ckpt_dir / tag / MARKER, state)
        _prune(ckpt_dir, state["settings_hash"], state["world_size"], KEEP_CHECKPOINTS)


def resume(
    engine, ckpt_dir: Path, settings_hash: str, rank: int, world: int, total: int
) -> tuple[int, list]:
    """(step, history) of the newest matching checkpoint, loaded into `engine`; (0, []) if none."""
    found = find_checkpoint(ckpt_dir, settings_hash, world, verbose=rank == 0)
    if found is None:
        return 0, []
    with weights_only_checkpoint_loads():
        path, client = engine.load_checkpoint(str(ckpt_dir), tag=found["tag"])
    if path is None or (client or {}).get("settings_hash") != settings_hash:
        raise EagleTrainError(f"{ckpt_dir / found['tag']}: DeepSpeed could not load it")
    if rank == 0:
        log.info("resuming from %s (step %d of %d)", ckpt_dir / found["tag"], found["step"], total)
    return found["step"], list(found.get("history", []))
