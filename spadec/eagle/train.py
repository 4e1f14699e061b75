"""Train the EAGLE draft head with DeepSpeed (ZeRO-2), resumably, on one or many ranks.

The training flow: the run plan, the engine, the loop and held-out evaluation, plus the
target tensors and the data split/order. The loss lives in spadec.eagle.losses, the
DeepSpeed config, process group and checkpoints in spadec.eagle.ds_runtime.

Train samples get uniform noise U(-a/2, a/2) on their input features, a =
`noise_amplitude` (no length-dependent scale). The held-out split is a seeded shuffle of
all samples. Batches are built here, not by DeepSpeed: epoch e visits the train samples
in a shuffle seeded by (seed, e), rank r of W takes every W-th micro-batch, and the
random draws of micro-step k are seeded by (seed, k, r), so a resumed run repeats the
unbroken one exactly.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spadec.config import STAGE_PARTS, config_hash
from spadec.eagle.data import MANIFEST, SHARD_FILE, ShardReader, collate_pairs, training_pair
from spadec.eagle.ds_runtime import (
    EagleTrainError,
    all_sum,
    barrier,
    deepspeed_config,
    distributed,
    resume,
    save,
)
from spadec.eagle.head import EagleHead, init_head, save_head
from spadec.eagle.losses import combined_loss, head_losses
from spadec.io import read_json
from spadec.logs import progress
from spadec.pacing import paced
from spadec.provenance import RunInfo
from spadec.training import ADAMW_BETAS, epoch_seed, step_seed

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
# The settings that shape the trained weights; decoding keys (depth, top_k, ...) and the
# log/checkpoint cadence may change without discarding a checkpoint.
CADENCE_KEYS = ("checkpoint_every", "log_every")
TRAIN_KEYS = ("seed", *(k for k in STAGE_PARTS["eagle"]["train"] if k not in CADENCE_KEYS))


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
    random.Random(epoch_seed(seed, epoch)).shuffle(order)
    return order


def micro_batch_indices(order: list[int], pos: int, micro: int, rank: int, world: int) -> list[int]:
    """Samples of `rank` at micro-step `pos` of an epoch (wraps around a short epoch)."""
    first = (pos * world + rank) * micro
    return [order[(first + j) % len(order)] for j in range(micro)]


def _batch(reader: ShardReader, indices: list[int], max_len: int, device) -> dict:
    pairs = [training_pair(reader[i], max_len) for i in indices]
    return {k: v.to(device) for k, v in collate_pairs(pairs).items()}


# ----------------------------------------------------------------------------- training


def _check_settings(settings: dict) -> None:
    missing = [k for k in (*TRAIN_KEYS, *CADENCE_KEYS) if k not in settings]
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
    v, p, n, top1, top3 = all_sum(sums, device)
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
        start, history = resume(
            engine, Path(ckpt_dir), settings_hash, plan.rank, plan.world, plan.total
        )
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
        barrier()
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
    head = init_head(config, embed)
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings["lr"], betas=ADAMW_BETAS, weight_decay=settings["weight_decay"]
    )
    engine, _, _, _ = deepspeed.initialize(
        model=head, model_parameters=trainable, optimizer=optimizer, config=ds_config
    )
    return engine, head


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
    for step in paced(bar):
        for a in range(plan.accum):
            k = step * plan.accum + a
            epoch, pos = divmod(k, plan.micro_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(plan.train, seed, epoch), epoch
            idx = micro_batch_indices(order, pos, settings["micro_batch"], plan.rank, plan.world)
            batch = _batch(reader, idx, settings["max_len"], device)
            # Noise (and any dropout) depends on (seed, micro-step, rank) only: a resumed
            # run draws what the unbroken run drew.
            torch.manual_seed(step_seed(seed, k, plan.world, plan.rank))
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
            loss_s, v_s, p_s, n = all_sum(window.tolist(), device)
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
            save(engine, ckpt_dir, done, state, plan.rank)
    return history
