"""Train the EAGLE draft head with DeepSpeed (ZeRO-2), resumably, on one or many ranks.

The training flow: the run plan, the engine, the loop and held-out evaluation, plus the
target tensors and the data split/order. The loss lives in spadec.eagle.losses, the
DeepSpeed config, process group and checkpoints in spadec.eagle.ds_runtime.

The parts that do not depend on the head (the shards and target, the plan, the engine,
the step loop with its seeding, logging and checkpoints, the fp32 weights and the run
hash; `train_module`, the run around them; `script_main`, the workflow script's command
line) are public: the Medusa heads (spadec.medusa.train) train through them on the same
shards, so both trainers batch, seed, checkpoint and resume the same way.

Train samples get uniform noise U(-a/2, a/2) on their input features, a =
`noise_amplitude` (no length-dependent scale). The held-out split is a seeded shuffle of
all samples. Batches are built here, not by DeepSpeed: epoch e visits the train samples
in a shuffle seeded by (seed, e), rank r of W takes every W-th micro-batch, and the
random draws of micro-step k are seeded by (seed, k, r), so a resumed run repeats the
unbroken one exactly.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
from spadec.eagle.head import init_head, save_head
from spadec.eagle.losses import combined_loss, head_losses
from spadec.eagle.vocab import answer_token_counts
from spadec.io import read_json
from spadec.logs import progress, setup_logging
from spadec.pacing import paced
from spadec.provenance import RunInfo
from spadec.training import ADAMW_BETAS, epoch_seed, step_seed

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
# The settings that shape the trained weights; decoding keys (depth, top_k, ...) and the
# log/checkpoint cadence may change without discarding a checkpoint.
CADENCE_KEYS = ("checkpoint_every", "log_every")


def train_keys(stage: str) -> tuple[str, ...]:
    """The settings that shape a stage's trained weights (and so its checkpoint hash):
    the seed and the stage's train settings (spadec.config.STAGE_PARTS) but the cadence."""
    return ("seed", *(k for k in STAGE_PARTS[stage]["train"] if k not in CADENCE_KEYS))


TRAIN_KEYS = train_keys("eagle")
DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "deepspeed" / "zero2.json"


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


def open_data(shard_dirs: list, target_dir: str | Path):
    """(reader, target config, embedding, LM head) of a head's training data and target.

    The shards must exist and hold features of the target's hidden size."""
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
    return reader, config, embed, lm_head


# ----------------------------------------------------------------------------- training


def _check_settings(settings: dict) -> None:
    missing = [k for k in (*TRAIN_KEYS, *CADENCE_KEYS) if k not in settings]
    if missing:
        raise EagleTrainError(f"eagle settings lack {', '.join(missing)}")
    check_precision(settings)


def check_precision(settings: dict) -> None:
    if settings["train_precision"] not in PRECISIONS:
        raise EagleTrainError(
            f"train_precision '{settings['train_precision']}' is not one of {', '.join(PRECISIONS)}"
        )


def data_hash(
    settings: dict, keys, ds_config: dict, shard_dirs: list[Path], target_dir: Path
) -> str:
    """What a checkpoint must match to be resumed: the training settings named by `keys`,
    the filled DeepSpeed config, the shards and the target. Files count by name, size and
    mtime: a regenerated shard or retrained target has the same manifest or config but
    new files."""

    def stamp(path: Path) -> list:
        stat = path.stat()
        return [path.name, stat.st_size, stat.st_mtime_ns]

    return config_hash(
        {
            "settings": {k: settings[k] for k in keys},
            "deepspeed": ds_config,
            "data": [
                [read_json(Path(d) / MANIFEST), stamp(Path(d) / SHARD_FILE)] for d in shard_dirs
            ],
            "target": [read_json(target_dir / "config.json")]
            + [stamp(f) for f in sorted(target_dir.glob("*.safetensors"))],
        }
    )


def fp32_state(engine) -> dict[str, torch.Tensor]:
    """The module's trainable weights in fp32, from the optimizer's master copy.

    A collective under ZeRO-2 (each rank holds a slice of the master weights): every
    rank must call it, in the same order.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            full = safe_get_full_fp32_param(param)
            state[name] = (full if full is not None else param.detach()).float().cpu().clone()
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
class Plan:
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


def plan_run(settings: dict, samples: int) -> Plan:
    """The plan of a run over `samples` samples, from the settings' split, batch and epoch
    keys (heldout_fraction, seed, micro_batch, grad_accum, epochs, warmup_steps)."""
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
    return Plan(rank, world, train, heldout, accum, steps_per_epoch, total, warmup)


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
    reader, config, embed, lm_head = open_data(shard_dirs, target_dir)
    metrics = train_module(
        settings,
        run_info,
        reader,
        lm_head,
        target_dir=target_dir,
        shard_dirs=shard_dirs,
        out_dir=out_dir,
        ckpt_dir=ckpt_dir,
        ds_config_path=ds_config_path,
        keys=TRAIN_KEYS,
        build=lambda: init_head(config, embed),
        frozen={"embed_tokens.weight": embed},  # the target's exact fp32 copy
        micro_step=_eagle_micro_step,
        names=("loss", "vloss", "ploss"),
        describe=lambda e: f"loss {e['loss']:.4f} (value {e['vloss']:.4f}, prob {e['ploss']:.4f})",
        evaluate=evaluate,
        held_keys=("top1", "top3"),
        # the answer-token counts of the draft vocabulary travel with the head
        save=partial(save_head, token_counts=answer_token_counts(shard_dirs, config.vocab_size)),
    )
    if metrics is not None:
        held = metrics["heldout"]
        log.info(
            "held-out top-1 %s, top-3 %s; head written to %s", held["top1"], held["top3"], out_dir
        )
    return metrics


def train_module(
    settings: dict,
    run_info: RunInfo,
    reader: ShardReader,
    lm_head: torch.Tensor,
    *,
    target_dir: str | Path,
    shard_dirs: list[Path],
    out_dir: str | Path,
    ckpt_dir: str | Path,
    ds_config_path: str | Path,
    keys: tuple[str, ...],
    build: Callable[[], torch.nn.Module],
    micro_step: Callable,
    names: tuple[str, ...],
    describe: Callable[[dict], str],
    evaluate: Callable[..., dict],
    save: Callable[..., None],
    held_keys: tuple[str, ...],
    frozen: dict[str, torch.Tensor] | None = None,
    intro: str = "",
    head_metrics: dict | None = None,
    logger: logging.Logger = log,
) -> dict | None:
    """Train a draft module on the shards of `reader` (the EAGLE head here, the Medusa
    heads in spadec.medusa.train): plan, engine, resume, `train_steps`, fp32 weights,
    held-out evaluation; rank 0 saves the module with metrics.json and run_info.json to
    `out_dir` and returns the metrics (the other ranks None).

    The module's own pieces: `build()` makes it (nn.Module with a `config`, from which
    `type(module)(module.config)` makes a fresh one for the fp32 weights, plus the frozen
    tensors `frozen`); `micro_step(engine, reader, settings, w_lm)` returns train_steps'
    micro-step, whose terms are logged as `names` and shown by `describe`; `evaluate(module,
    reader, indices, settings, w_lm, rank, world)` scores the held-out samples, whose
    `held_keys` also go to the metrics as `heldout_<key>`; `save(module, out_dir, files)`
    writes it. `keys` are the settings the checkpoint hash covers, `intro` opens the plan's
    log line and `head_metrics` the metrics. `w_lm` is `lm_head` on the engine's device:
    frozen, fp32, outside DeepSpeed.
    """
    template = read_json(ds_config_path)
    with distributed():
        plan = plan_run(settings, len(reader))
        ds_config = deepspeed_config(template, settings, plan.total, plan.warmup)
        engine, module = make_engine(settings, ds_config, build)
        w_lm = lm_head.to(engine.device)  # frozen, fp32, outside DeepSpeed: it only scores
        settings_hash = data_hash(settings, keys, ds_config, shard_dirs, Path(target_dir))
        start, history = resume(
            engine, Path(ckpt_dir), settings_hash, plan.rank, plan.world, plan.total
        )
        if plan.rank == 0:
            logger.info(
                "%s%d train / %d held-out samples, %d optimizer steps (%d per epoch), world %d, "
                "global batch %d, %s, %d trainable parameters",
                intro,
                len(plan.train),
                len(plan.heldout),
                plan.total,
                plan.steps_per_epoch,
                plan.world,
                settings["micro_batch"] * plan.accum * plan.world,
                settings["train_precision"],
                trainable_count(module),
            )
        t0 = time.perf_counter()
        history = train_steps(
            engine,
            plan,
            settings,
            micro_step(engine, reader, settings, w_lm),
            names,
            start=start,
            history=history,
            ckpt_dir=Path(ckpt_dir),
            settings_hash=settings_hash,
            desc=run_info.stage,
            describe=describe,
            logger=logger,
        )
        train_wall = time.perf_counter() - t0
        final = type(module)(module.config)  # fp32 (rotary buffers are not persistent)
        final.load_state_dict({**fp32_state(engine), **(frozen or {})})
        held = evaluate(
            final.to(engine.device), reader, plan.heldout, settings, w_lm, plan.rank, plan.world
        )
        barrier()
    if plan.rank != 0:
        return None
    metrics = {
        **(head_metrics or {}),
        "train_samples": len(plan.train),
        "heldout_samples": len(plan.heldout),
        "steps": plan.total,
        "steps_per_epoch": plan.steps_per_epoch,
        "resumed_from_step": start,
        "world_size": plan.world,
        "global_batch": settings["micro_batch"] * plan.accum * plan.world,
        "train_precision": settings["train_precision"],
        "trainable_parameters": trainable_count(module),
        "train_wall_s": round(train_wall, 1),
        "heldout": held,
        **{f"heldout_{k}": held[k] for k in held_keys},
        "history": history,
    }
    info = run_info.as_dict(
        target_dir=str(target_dir),
        shard_dirs=[str(d) for d in shard_dirs],
        deepspeed_config=ds_config,
        world_size=plan.world,
    )
    save(final.cpu(), out_dir, {"metrics.json": metrics, "run_info.json": info})
    return metrics


def trainable_count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def make_engine(settings: dict, ds_config: dict, build: Callable[[], torch.nn.Module]):
    """(DeepSpeed engine, module): `build()` under the run's seed, a torch AdamW over its
    trainable parameters (no JIT-built fused optimizer), ZeRO as `ds_config` says."""
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
    module = build()
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings["lr"], betas=ADAMW_BETAS, weight_decay=settings["weight_decay"]
    )
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=trainable, optimizer=optimizer, config=ds_config
    )
    return engine, module


def _eagle_micro_step(engine, reader, settings, w_lm):
    """One EAGLE micro-step's (loss, vloss, ploss) on the samples `idx`."""
    device = engine.device
    dtype = engine.module.fc.weight.dtype
    amplitude = settings["noise_amplitude"]

    def micro_step(idx: list[int]) -> tuple[torch.Tensor, ...]:
        batch = _batch(reader, idx, settings["max_len"], device)
        feats = batch["features"]
        if amplitude > 0:
            noise = (torch.rand(feats.shape, device=device) - 0.5) * amplitude
            feats = feats + noise * batch["attention_mask"][..., None]
        pred = engine(feats.to(dtype), batch["input_ids"], batch["attention_mask"])
        sums = head_losses(pred, batch["target"], batch["loss_mask"], w_lm)
        return combined_loss(sums, settings)

    return micro_step


def train_steps(
    engine,
    plan: Plan,
    settings: dict,
    micro_step: Callable[[list[int]], tuple[torch.Tensor, ...]],
    names: tuple[str, ...],
    *,
    start: int,
    history: list,
    ckpt_dir: Path,
    settings_hash: str,
    desc: str,
    describe: Callable[[dict], str],
    logger: logging.Logger = log,
) -> list:
    """Optimizer steps `start`..`plan.total` of a run; returns the history (log entries).

    `micro_step(indices)` runs the module on those samples and returns the loss to
    backpropagate first, then any further terms; all of them are logged under `names`,
    averaged over the micro-steps since the last log line. Each micro-step's random draws
    (noise, dropout) are seeded by (seed, micro-step, rank) before it runs, so a resumed
    run draws what the unbroken run drew. Every `checkpoint_every` steps (not at the
    last) the engine, step and history are checkpointed under `ckpt_dir`.
    """
    seed, device = settings["seed"], engine.device
    engine.train()
    # the logged terms and the micro-steps since the last log line
    window = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
    one = torch.ones((), device=device)
    order, order_epoch = [], -1
    bar = progress(
        range(start, plan.total),
        desc=desc,
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
            # Noise (and any dropout) depends on (seed, micro-step, rank) only: a resumed
            # run draws what the unbroken run drew.
            torch.manual_seed(step_seed(seed, k, plan.world, plan.rank))
            terms = micro_step(idx)
            engine.backward(terms[0])
            engine.step()  # DeepSpeed steps the optimizer on the last micro-step only
            # Summed on the device, read at log time: no host sync per micro-step.
            window += torch.stack([*(t.detach() for t in terms), one])
        done = step + 1
        if done % settings["log_every"] == 0 or done == plan.total:
            *sums, n = all_sum(window.tolist(), device)
            window.zero_()
            entry = {"step": done, "lr": engine.get_lr()[0]}
            entry.update({name: round(s / n, 6) for name, s in zip(names, sums, strict=True)})
            history.append(entry)
            if plan.rank == 0:
                bar.set_postfix(loss=entry[names[0]])
                logger.info("step %d/%d %s lr %.2e", done, plan.total, describe(entry), entry["lr"])
        if done % settings["checkpoint_every"] == 0 and done < plan.total:
            state = {
                "settings_hash": settings_hash,
                "step": done,
                "world_size": plan.world,
                "history": history,
            }
            save(engine, ckpt_dir, done, state, plan.rank)
    return history


def script_main(doc: str, train: Callable[..., dict | None], *, stage: str, output: str) -> None:
    """The command line of a head trainer's workflow script (workflow_scripts/train_eagle.py,
    train_medusa.py; `doc` is its help text): parse it, set up logging and run `train`
    (train_head's signature) on the `stage` settings, writing the `output` directory."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--config", required=True, help=f"resolved {stage} settings (JSON)")
    parser.add_argument("--target", required=True, help="target model directory (HF)")
    parser.add_argument("--data", required=True, nargs="+", help="EAGLE data shard directories")
    parser.add_argument("--ckpt", required=True, help="resumable training state (not an output)")
    parser.add_argument("--out", required=True, help=f"{output} output directory")
    parser.add_argument(
        "--ds-config",
        default=str(DEFAULT_DS_CONFIG),
        help="DeepSpeed config template (default: configs/deepspeed/zero2.json)",
    )
    # DeepSpeed's launcher adds --local_rank=N unless told --no_local_rank; the rank is read
    # from the environment either way.
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    setup_logging()
    train(read_json(args.config), args.target, args.data, args.out, args.ckpt, args.ds_config)
