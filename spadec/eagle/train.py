"""Train the EAGLE draft head with DeepSpeed (ZeRO-2), resumably, on one or many ranks.

    vloss = sum_t m_t * mean_d SmoothL1(pred_t - target_t) / sum_t m_t
    ploss = -sum_t m_t * sum_v softmax(W_lm target_t)_v * log_softmax(W_lm pred_t)_v / sum_t m_t
    loss  = value_weight * vloss + prob_weight * ploss

m marks answer positions (padding and prompt never count, unlike upstream's B*L
normalisation); W_lm is the target's LM head (its embedding when tied), a frozen fp32
tensor read straight from the target's safetensors. Train samples get uniform noise
U(-a/2, a/2) on their input features, a = `noise_amplitude` (no length-dependent scale).
The held-out split is a seeded shuffle of all samples.

DeepSpeed gets the head, its trainable parameters and a torch AdamW (no JIT-built fused
optimizer); the config is configs/deepspeed/zero2.json with every "auto" filled from the
settings. Batches are built here, not by DeepSpeed: epoch e visits the train samples in
a shuffle seeded by (seed, e), rank r of W takes every W-th micro-batch, and the random
draws of micro-step k are seeded by (seed, k, r), so a resumed run repeats the unbroken
one exactly. Checkpoints are DeepSpeed's own (`ckpt_dir/step_<n>/`, one optimizer shard
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
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spadec.config import config_hash
from spadec.eagle.data import MANIFEST, SHARD_FILE, ShardReader, collate_pairs, training_pair
from spadec.eagle.ds_safe_load import weights_only_checkpoint_loads
from spadec.eagle.head import EagleHead, head_config_for, save_head
from spadec.io import read_json, write_json
from spadec.logs import progress
from spadec.provenance import RunInfo

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
MARKER = "spadec_state.json"
KEEP_CHECKPOINTS = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")
# The settings that shape the trained weights; decoding keys (depth, top_k, ...) and the
# log/checkpoint cadence may change without discarding a checkpoint.
TRAIN_KEYS = (
    "seed",
    "lr",
    "micro_batch",
    "grad_accum",
    "grad_clip",
    "epochs",
    "noise_amplitude",
    "max_len",
    "heldout_fraction",
    "train_precision",
    "warmup_steps",
    "weight_decay",
    "value_weight",
    "prob_weight",
)
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


class EagleTrainError(ValueError):
    """Settings, target or DeepSpeed config the trainer cannot work with."""


# ----------------------------------------------------------------------------- target


def _safetensors_files(target_dir: Path) -> dict[str, Path]:
    """Tensor name -> file, for a single-file or sharded safetensors checkpoint."""
    index = target_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index)["weight_map"]
        return {name: target_dir / file for name, file in weight_map.items()}
    single = target_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as handle:
            return {name: single for name in handle.keys()}  # noqa: SIM118 (not a dict)
    return {}


def _read_tensor(files: dict[str, Path], name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(files[name]), framework="pt") as handle:
        return handle.get_tensor(name)


def target_tensors(target_dir: str | Path):
    """(config, embedding, LM head weight) of a target model directory, both fp32 [V, d].

    Reads only those two tensors from safetensors (a 7B target is not loaded whole);
    other formats fall back to loading the model. Tied heads share the embedding.
    """
    from transformers import AutoConfig

    target_dir = Path(target_dir)
    if not (target_dir / "config.json").is_file():
        raise EagleTrainError(f"{target_dir}: not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(target_dir)
    files = _safetensors_files(target_dir)
    embed_key = next((k for k in files if k.endswith("embed_tokens.weight")), None)
    if embed_key is not None:
        embed = _read_tensor(files, embed_key).float()
        head_key = next((k for k in files if k.endswith("lm_head.weight")), None)
        lm_head = _read_tensor(files, head_key).float() if head_key else embed
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
        embed = model.get_input_embeddings().weight.detach().clone()
        lm_head = model.get_output_embeddings().weight.detach().clone()
        del model
    if embed.shape != lm_head.shape or embed.shape[1] != config.hidden_size:
        raise EagleTrainError(
            f"{target_dir}: embedding {tuple(embed.shape)} and LM head {tuple(lm_head.shape)} "
            f"do not fit hidden size {config.hidden_size}"
        )
    if embed.shape[0] != config.vocab_size:
        raise EagleTrainError(
            f"{target_dir}: embedding has {embed.shape[0]} rows, config.vocab_size is "
            f"{config.vocab_size}"
        )
    return config, embed, lm_head


# ----------------------------------------------------------------------------- losses


def head_losses(
    pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor, w_lm: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Masked sums over answer positions (divide by `count` for the means above).

    pred, target: [B, L, d]; loss_mask: [B, L] in {0, 1}; w_lm: [V, d] fp32. Only the
    masked rows are projected onto the vocabulary: B*L*V logits would dwarf the head.
    Returns vloss_sum, ploss_sum (differentiable), count, top1 and top3 (hit counts).
    """
    keep = loss_mask > 0
    p = pred[keep].float()
    t = target[keep].float()
    v_sum = F.smooth_l1_loss(p, t, reduction="none", beta=1.0).mean(-1).sum()
    with torch.no_grad():
        target_logits = t @ w_lm.T
        p_target = torch.softmax(target_logits, dim=-1)
        labels = target_logits.argmax(-1)
    logq = torch.log_softmax(p @ w_lm.T, dim=-1)
    p_sum = -(p_target * logq).sum()
    with torch.no_grad():
        top = logq.topk(min(3, logq.shape[-1]), dim=-1).indices
        hits = top == labels[:, None]
    # pred.sum() * 0: an all-prompt micro-batch still reaches every parameter, which
    # ZeRO-2's gradient hooks expect.
    zero = pred.sum() * 0
    return {
        "vloss_sum": v_sum + zero,
        "ploss_sum": p_sum + zero,
        "count": keep.sum(),
        "top1": hits[:, 0].sum(),
        "top3": hits.any(-1).sum(),
    }


def combined_loss(sums: dict, settings: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    denom = sums["count"].clamp(min=1)
    vloss, ploss = sums["vloss_sum"] / denom, sums["ploss_sum"] / denom
    return settings["value_weight"] * vloss + settings["prob_weight"] * ploss, vloss, ploss


# ----------------------------------------------------------------------------- data


def split_samples(n: int, heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) sample indices: a seeded shuffle, at least one of each when n >= 2."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = min(max(1, round(n * heldout_fraction)), n - 1) if n >= 2 else 0
    return sorted(order[held:]), sorted(order[:held])


def epoch_order(train: list[int], seed: int, epoch: int) -> list[int]:
    """The train samples in the order epoch `epoch` visits them (the same on every rank)."""
    order = list(train)
    random.Random(seed * 7919 + epoch).shuffle(order)
    return order


def micro_batch_indices(order: list[int], pos: int, micro: int, rank: int, world: int) -> list[int]:
    """Samples of `rank` at micro-step `pos` of an epoch (wraps around a short epoch)."""
    first = (pos * world + rank) * micro
    return [order[(first + j) % len(order)] for j in range(micro)]


def _batch(reader: ShardReader, indices: list[int], max_len: int, device) -> dict:
    pairs = [training_pair(reader[i], max_len) for i in indices]
    return {k: v.to(device) for k, v in collate_pairs(pairs).items()}


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


def _barrier() -> None:
    torch.distributed.barrier()


def _all_sum(values: list[float], device) -> list[float]:
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


def _save(engine, ckpt_dir: Path, step: int, state: dict, rank: int) -> None:
    tag = f"step_{step}"
    if rank == 0:
        # A leftover folder of that name (other settings) must not lend its marker to a
        # half-written save of ours.
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    _barrier()
    # save_latest=False: resume reads the markers, never DeepSpeed's `latest` file, which
    # would name a checkpoint before its marker exists.
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    # save_checkpoint (torch checkpoint engine, not a decoupled/async one) ends in a
    # barrier already; this one keeps the marker's guarantee if that ever changes.
    _barrier()
    if rank == 0:
        write_json(ckpt_dir / tag / MARKER, state)
        _prune(ckpt_dir, state["settings_hash"], state["world_size"], KEEP_CHECKPOINTS)


# ----------------------------------------------------------------------------- training


def _check_settings(settings: dict) -> None:
    missing = [k for k in (*TRAIN_KEYS, "checkpoint_every", "log_every") if k not in settings]
    if missing:
        raise EagleTrainError(f"eagle settings lack {', '.join(missing)}")
    if settings["train_precision"] not in PRECISIONS:
        raise EagleTrainError(
            f"train_precision '{settings['train_precision']}' is not one of {', '.join(PRECISIONS)}"
        )


def run_hash(settings: dict, ds_config: dict, shard_dirs: list[Path], target_dir: Path) -> str:
    """What a checkpoint must match to be resumed: the training settings, the filled
    DeepSpeed config, the shards and the target. Files count by name, size and mtime: a
    regenerated shard or retrained target has the same manifest or config but new files."""

    def stamp(path: Path) -> list:
        stat = path.stat()
        return [path.name, stat.st_size, stat.st_mtime_ns]

    return config_hash(
        {
            "settings": {k: settings[k] for k in TRAIN_KEYS},
            "deepspeed": ds_config,
            "data": [
                [read_json(Path(d) / MANIFEST), stamp(Path(d) / SHARD_FILE)] for d in shard_dirs
            ],
            "target": [read_json(target_dir / "config.json")]
            + [stamp(f) for f in sorted(target_dir.glob("*.safetensors"))],
        }
    )


def _fp32_state(engine, embed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The head's weights in fp32 (trainable ones from the optimizer's master copy).

    A collective under ZeRO-2 (each rank holds a slice of the master weights): every
    rank must call it, in the same order.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            full = safe_get_full_fp32_param(param)
            state[name] = (full if full is not None else param.detach()).float().cpu().clone()
    state["embed_tokens.weight"] = embed.clone()  # frozen: the target's exact fp32 copy
    return state


@torch.no_grad()
def evaluate(head, reader, indices, settings, w_lm, rank, world) -> dict:
    """Held-out losses and top-1/top-3 agreement with the target's own next token.

    Each rank scores its share of `indices`; the sums are added over ranks.
    """
    head.eval()
    device = w_lm.device
    keys = ("vloss_sum", "ploss_sum", "count", "top1", "top3")
    sums = [0.0] * len(keys)
    micro = settings["micro_batch"]
    mine = indices[rank::world]
    for first in range(0, len(mine), micro):
        batch = _batch(reader, mine[first : first + micro], settings["max_len"], device)
        pred = head(batch["features"], batch["input_ids"], batch["attention_mask"])
        out = head_losses(pred, batch["target"], batch["loss_mask"], w_lm)
        sums = [acc + float(out[k]) for acc, k in zip(sums, keys, strict=True)]
    v, p, n, top1, top3 = _all_sum(sums, device)
    if n == 0:
        return {
            "positions": 0,
            "vloss": None,
            "ploss": None,
            "loss": None,
            "top1": None,
            "top3": None,
        }
    vloss, ploss = v / n, p / n
    return {
        "positions": int(n),
        "vloss": round(vloss, 6),
        "ploss": round(ploss, 6),
        "loss": round(settings["value_weight"] * vloss + settings["prob_weight"] * ploss, 6),
        "top1": round(top1 / n, 6),
        "top3": round(top3 / n, 6),
    }


@dataclass
class _Plan:
    """How the samples map onto ranks and optimizer steps."""

    rank: int
    world: int
    train: list[int]
    heldout: list[int]
    accum: int
    steps_per_epoch: int
    total: int
    warmup: int

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accum


def _plan(settings: dict, samples: int) -> _Plan:
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    train, heldout = split_samples(samples, settings["heldout_fraction"], settings["seed"])
    accum = settings["grad_accum"]
    # Whole global batches per epoch; a set smaller than one batch still makes one step.
    steps_per_epoch = max(1, len(train) // (settings["micro_batch"] * world * accum))
    total = settings["epochs"] * steps_per_epoch
    warmup = min(settings["warmup_steps"], total)
    if warmup < settings["warmup_steps"] and rank == 0:
        log.warning(
            "warm-up cut to the run's %d optimizer steps (asked %d)",
            total,
            settings["warmup_steps"],
        )
    return _Plan(rank, world, train, heldout, accum, steps_per_epoch, total, warmup)


def train_head(
    settings: dict,
    target_dir: str | Path,
    shard_dirs: list,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    ds_config_path: str | Path,
) -> dict | None:
    """Train the head on `shard_dirs`; rank 0 writes `out_dir` and returns the metrics."""
    _check_settings(settings)
    run_info = RunInfo("train_eagle", settings)
    shard_dirs = [Path(d) for d in shard_dirs]
    missing = [str(d) for d in shard_dirs if not d.is_dir()]
    if missing:
        raise EagleTrainError(f"EAGLE data shard(s) not found: {', '.join(missing)}")
    reader = ShardReader(shard_dirs)
    config, embed, lm_head = target_tensors(target_dir)
    if reader.hidden_size != config.hidden_size:
        raise EagleTrainError(
            f"the shards hold {reader.hidden_size}-dim features but {target_dir} has hidden "
            f"size {config.hidden_size} (data of another target?)"
        )
    template = read_json(ds_config_path)
    with distributed():
        plan = _plan(settings, len(reader))
        ds_config = deepspeed_config(template, settings, plan.total, plan.warmup)
        engine, head = _engine(settings, config, embed, ds_config)
        w_lm = lm_head.to(engine.device)  # frozen, fp32, outside DeepSpeed: it only scores
        settings_hash = run_hash(settings, ds_config, shard_dirs, Path(target_dir))
        start, history = _resume(engine, Path(ckpt_dir), settings_hash, plan)
        if plan.rank == 0:
            log.info(
                "%d train / %d held-out samples, %d optimizer steps (%d per epoch), world %d, "
                "global batch %d, %s, %d trainable parameters",
                len(plan.train),
                len(plan.heldout),
                plan.total,
                plan.steps_per_epoch,
                plan.world,
                settings["micro_batch"] * plan.accum * plan.world,
                settings["train_precision"],
                _trainable(head),
            )
        t0 = time.perf_counter()
        history = _loop(
            engine, reader, settings, plan, w_lm, start, history, Path(ckpt_dir), settings_hash
        )
        train_wall = time.perf_counter() - t0
        final = EagleHead(head.config)
        final.load_state_dict(_fp32_state(engine, embed))  # rotary buffers are not persistent
        held = evaluate(
            final.to(engine.device), reader, plan.heldout, settings, w_lm, plan.rank, plan.world
        )
        _barrier()
    if plan.rank != 0:
        return None
    metrics = {
        "train_samples": len(plan.train),
        "heldout_samples": len(plan.heldout),
        "steps": plan.total,
        "steps_per_epoch": plan.steps_per_epoch,
        "resumed_from_step": start,
        "world_size": plan.world,
        "global_batch": settings["micro_batch"] * plan.accum * plan.world,
        "train_precision": settings["train_precision"],
        "trainable_parameters": _trainable(head),
        "train_wall_s": round(train_wall, 1),
        "heldout": held,
        "heldout_top1": held["top1"],
        "heldout_top3": held["top3"],
        "history": history,
    }
    info = run_info.as_dict(
        target_dir=str(target_dir),
        shard_dirs=[str(d) for d in shard_dirs],
        deepspeed_config=ds_config,
        world_size=plan.world,
    )
    save_head(final.cpu(), out_dir, {"metrics.json": metrics, "run_info.json": info})
    log.info("held-out top-1 %s, top-3 %s; head written to %s", held["top1"], held["top3"], out_dir)
    return metrics


def _trainable(head) -> int:
    return sum(p.numel() for p in head.parameters() if p.requires_grad)


def _engine(settings: dict, config, embed: torch.Tensor, ds_config: dict):
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    precision = settings["train_precision"]
    supported = {"fp32": True, "bf16": accel.is_bf16_supported(), "fp16": accel.is_fp16_supported()}
    if not supported[precision]:
        raise EagleTrainError(
            f"train_precision '{precision}' is not supported by the {accel.device_name()} accelerator"
        )
    torch.manual_seed(settings["seed"])  # initial weights (DeepSpeed broadcasts rank 0's)
    head = EagleHead(head_config_for(config))
    with torch.no_grad():
        head.embed_tokens.weight.copy_(embed)
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings["lr"], betas=(0.9, 0.95), weight_decay=settings["weight_decay"]
    )
    engine, _, _, _ = deepspeed.initialize(
        model=head, model_parameters=trainable, optimizer=optimizer, config=ds_config
    )
    return engine, head


def _resume(engine, ckpt_dir: Path, settings_hash: str, plan: _Plan) -> tuple[int, list]:
    found = find_checkpoint(ckpt_dir, settings_hash, plan.world, verbose=plan.rank == 0)
    if found is None:
        return 0, []
    with weights_only_checkpoint_loads():
        path, client = engine.load_checkpoint(str(ckpt_dir), tag=found["tag"])
    if path is None or (client or {}).get("settings_hash") != settings_hash:
        raise EagleTrainError(f"{ckpt_dir / found['tag']}: DeepSpeed could not load it")
    if plan.rank == 0:
        log.info(
            "resuming from %s (step %d of %d)", ckpt_dir / found["tag"], found["step"], plan.total
        )
    return found["step"], list(found.get("history", []))


def _loop(engine, reader, settings, plan, w_lm, start, history, ckpt_dir, settings_hash) -> list:
    seed, device = settings["seed"], engine.device
    dtype = engine.module.fc.weight.dtype
    amplitude = settings["noise_amplitude"]
    engine.train()
    # loss, vloss, ploss, micro-steps since the last log line
    window = torch.zeros(4, dtype=torch.float64, device=device)
    one = torch.ones((), device=device)
    order, order_epoch = [], -1
    bar = progress(
        range(start, plan.total),
        desc="train_eagle",
        initial=start,
        total=plan.total,
        disable=plan.rank != 0,
    )
    for step in bar:
        for a in range(plan.accum):
            k = step * plan.accum + a
            epoch, pos = divmod(k, plan.micro_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(plan.train, seed, epoch), epoch
            idx = micro_batch_indices(order, pos, settings["micro_batch"], plan.rank, plan.world)
            batch = _batch(reader, idx, settings["max_len"], device)
            # Noise (and any dropout) depends on (seed, micro-step, rank) only: a resumed
            # run draws what the unbroken run drew.
            torch.manual_seed(seed * 1_000_003 + k * plan.world + plan.rank)
            feats = batch["features"]
            if amplitude > 0:
                noise = (torch.rand(feats.shape, device=device) - 0.5) * amplitude
                feats = feats + noise * batch["attention_mask"][..., None]
            pred = engine(feats.to(dtype), batch["input_ids"], batch["attention_mask"])
            sums = head_losses(pred, batch["target"], batch["loss_mask"], w_lm)
            loss, vloss, ploss = combined_loss(sums, settings)
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimizer on the last micro-step only
            # Summed on the device, read at log time: no host sync per micro-step.
            window += torch.stack([loss.detach(), vloss.detach(), ploss.detach(), one])
        done = step + 1
        if done % settings["log_every"] == 0 or done == plan.total:
            loss_s, v_s, p_s, n = _all_sum(window.tolist(), device)
            window.zero_()
            entry = {
                "step": done,
                "lr": engine.get_lr()[0],
                "loss": round(loss_s / n, 6),
                "vloss": round(v_s / n, 6),
                "ploss": round(p_s / n, 6),
            }
            history.append(entry)
            if plan.rank == 0:
                bar.set_postfix(loss=entry["loss"])
                log.info(
                    "step %d/%d loss %.4f (value %.4f, prob %.4f) lr %.2e",
                    done,
                    plan.total,
                    entry["loss"],
                    entry["vloss"],
                    entry["ploss"],
                    entry["lr"],
                )
        if done % settings["checkpoint_every"] == 0 and done < plan.total:
            state = {
                "settings_hash": settings_hash,
                "step": done,
                "world_size": plan.world,
                "history": history,
            }
            _save(engine, ckpt_dir, done, state, plan.rank)
    return history
