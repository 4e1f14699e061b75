"""The D-LLM finetune: LoRA adapters (peft) and routers, trained together.

loss = LM loss on answer tokens + lambda(t) * mean_t |r_t - target|
  r_t      executed share of token t over all layers (static layers count as executed)
  lambda   lambda_max * sin(pi/2 * min(epoch / epochs, 1)): the sparsity pressure ramps up
Routers decide with hard Gumbel-softmax samples and straight-through gradients; the
learning rate is base_lr * batch / 256 with linear warm-up and a half-cycle cosine.
Training state is checkpointed to `ckpt_dir` and resumed when the settings match.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from spadec.checkpoint import latest_checkpoint, save_checkpoint
from spadec.config import config_hash
from spadec.dllm.build import dllm_from_base
from spadec.dllm.data import IGNORE, collate, encode_example
from spadec.io import atomic_dir, read_jsonl, write_json
from spadec.logs import progress
from spadec.pacing import paced
from spadec.provenance import RunInfo
from spadec.share_targets import check_layer_profile, dynamic_layer_rate
from spadec.training import ADAMW_BETAS, epoch_seed, step_seed

log = logging.getLogger(__name__)


SHARE_CONSTRAINTS = ("token", "batch", "layer")


def activation_loss(
    gates: torch.Tensor,
    token_mask: torch.Tensor,
    target: float,
    reserve: int,
    constraint: str = "token",
    dynamic_start: int = 0,
    layer_band: tuple[float, float] | None = None,
    layer_profile: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sparsity loss, mean executed share) over real tokens at positions >= reserve.

    gates: [B, L, num_layers] in {0, 1} (differentiable through the straight-through gate);
    the share counts every layer (static ones execute). `constraint` says what is held at
    `target`:
    - "token" (published): each token's share, mean |r_t - target| -- every token is pushed
      to the same layer count;
    - "batch": the share of the batch's tokens together, |mean_t r_t - target| -- tokens may
      use more or fewer layers as the language-model loss rewards;
    - "layer": each dynamic layer's execution rate over the batch's tokens, at the rate that
      gives `target` overall -- no layer can be pruned for every token.
    `layer_profile` (with "layer") replaces the one rate by a set of rates, one per dynamic
    layer, matched by rank: the rarest layer is held at the lowest rate, and so on. Which
    layer gets which rate is left to the language-model loss; the skip budget goes to a
    few layers that few tokens run instead of being spread over all of them.
    `layer_band` (lo, hi) adds, per dynamic layer, how far its rate over the batch lies
    outside [lo, hi]: a layer may be run by few tokens or by most, but not by none or all.
    """
    share = gates.mean(dim=-1)
    mask = token_mask.float().clone()
    mask[:, :reserve] = 0
    denom = mask.sum().clamp(min=1)
    mean_share = (mask * share).sum() / denom
    # each dynamic layer's execution rate over the batch's tokens
    rates = (mask[..., None] * gates[..., dynamic_start:]).sum((0, 1)) / denom
    if constraint == "token":
        loss = (mask * (share - target).abs()).sum() / denom
    elif constraint == "batch":
        loss = (mean_share - target).abs()
    elif constraint == "layer" and layer_profile is not None:
        profile = torch.tensor(sorted(layer_profile), dtype=rates.dtype, device=rates.device)
        loss = (torch.sort(rates).values - profile).abs().mean()
    elif constraint == "layer":
        layer_target = dynamic_layer_rate(target, gates.shape[-1], dynamic_start)
        loss = (rates - layer_target).abs().mean()
    else:
        raise ValueError(f"share constraint {constraint!r} is not one of {SHARE_CONSTRAINTS}")
    if layer_band is not None:
        lo, hi = layer_band
        loss = loss + ((lo - rates).clamp(min=0) + (rates - hi).clamp(min=0)).mean()
    return loss, mean_share


def router_noise(step: int, total: int, start: float, final: float) -> float:
    """The Gumbel noise scale of a training step: `start` at the first, `final` at the
    last, linear in between (1 and 1: the published constant noise)."""
    if start == final:
        return start
    return start + (final - start) * min(step / max(total - 1, 1), 1.0)


def sparsity_weight(epoch: float, epochs: float, lambda_max: float) -> float:
    return lambda_max * math.sin(math.pi / 2 * min(max(epoch / epochs, 0.0), 1.0))


def learning_rate(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def finetune(
    settings: dict,
    base_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
) -> dict | None:
    """Train LoRA + routers; write the adapter (peft format) and metrics to `out_dir`."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    run_info = RunInfo("finetune_dllm", settings)
    seed = settings["seed"]
    settings_hash = config_hash(settings)
    accel = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(seed)
    model = dllm_from_base(base_dir, settings)
    cfg = model.config
    # fail before any training
    profile = settings["layer_rate_profile"]
    if profile is not None:
        check_layer_profile(
            profile, cfg.target_share, cfg.num_hidden_layers, cfg.dynamic_start_layer
        )
        if settings["share_constraint"] != "layer":
            raise ValueError("layer_rate_profile needs share_constraint: layer")
    elif settings["share_constraint"] == "layer":
        dynamic_layer_rate(cfg.target_share, cfg.num_hidden_layers, cfg.dynamic_start_layer)
    band = settings["layer_rate_band"]
    if band is not None and not band[0] <= band[1]:
        raise ValueError(f"layer_rate_band {band}: its low end exceeds its high end")
    lora = LoraConfig(
        r=settings["lora_rank"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
        target_modules=settings["lora_targets"],
        modules_to_save=["router"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)

    records = read_jsonl(Path(data_dir) / "sft.jsonl")
    examples = [e for r in records if (e := encode_example(tokenizer, r, settings["max_seq_len"]))]
    if not examples:
        raise ValueError(f"no usable training examples in {data_dir}/sft.jsonl")
    batch = settings["batch_size"]
    world = accel.num_processes
    steps_per_epoch = max(1, len(examples) // (batch * world))
    total = max(1, round(settings["epochs"] * steps_per_epoch))
    warmup = round(settings["warmup_epochs"] * steps_per_epoch)
    peak_lr = settings["base_lr"] * batch * world / 256
    optimizer = torch.optim.AdamW(
        _param_groups(model, settings["weight_decay"]), lr=peak_lr, betas=ADAMW_BETAS
    )
    start, history = 0, []
    ckpt = latest_checkpoint(ckpt_dir, settings_hash)
    if ckpt is not None:
        missing = set(_trainable_state(model)) - set(ckpt.model_state())
        if missing:
            raise ValueError(f"checkpoint {ckpt.path} lacks {sorted(missing)[:3]}")
        model.load_state_dict(ckpt.model_state(), strict=False)
        optimizer.load_state_dict(ckpt.optimizer_state())
        start, history = ckpt.step, ckpt.state.get("history", [])
        log.info("resuming from %s (step %d)", ckpt.path, start)
    model, optimizer = accel.prepare(model, optimizer)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "%d examples, %d steps (%d per epoch), lr %.2e, %d trainable parameters",
        len(examples),
        total,
        steps_per_epoch,
        peak_lr,
        trainable,
    )

    t0 = time.perf_counter()
    window: list[dict] = []
    bar = progress(
        range(start, total),
        desc="finetune_dllm",
        initial=start,
        total=total,
        disable=not accel.is_local_main_process,
    )
    for step in paced(bar):
        epoch, pos = divmod(step, steps_per_epoch)
        order = list(range(len(examples)))
        random.Random(epoch_seed(seed, epoch)).shuffle(order)
        first = (pos * world + accel.process_index) * batch
        rows = collate([examples[i] for i in order[first : first + batch]], tokenizer.pad_token_id)
        rows = {k: v.to(accel.device) for k, v in rows.items()}
        # Gumbel noise and dropout depend on (seed, step, rank) only: a resumed run draws
        # exactly what the unbroken run drew.
        torch.manual_seed(step_seed(seed, step, world, accel.process_index))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, warmup, peak_lr)
        noise = router_noise(
            step, total, settings["router_noise_start"], settings["router_noise_final"]
        )
        out = model(**rows, router_noise=noise)
        token_mask = rows["attention_mask"].bool() & (rows["labels"] != IGNORE)
        a_loss, share = activation_loss(
            out.gates,
            token_mask,
            cfg.target_share,
            cfg.reserve_initials,
            settings["share_constraint"],
            cfg.dynamic_start_layer,
            settings["layer_rate_band"],
            settings["layer_rate_profile"],
        )
        lam = sparsity_weight(step / steps_per_epoch, settings["epochs"], settings["lambda_max"])
        loss = out.loss + lam * a_loss
        accel.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(
            {"loss": out.loss.item(), "active_loss": a_loss.item(), "share": share.item()}
        )
        if (step + 1) % settings["log_every"] == 0 or step + 1 == total:
            mean = {k: round(sum(w[k] for w in window) / len(window), 4) for k in window[0]}
            history.append({"step": step + 1, "lambda": round(lam, 4), **mean})
            bar.set_postfix(loss=mean["loss"], share=mean["share"])
            log.info(
                "step %d/%d lm %.3f active %.3f executed share %.3f (lambda %.2f)",
                step + 1,
                total,
                mean["loss"],
                mean["active_loss"],
                mean["share"],
                lam,
            )
            window = []
        if (step + 1) % settings["checkpoint_every"] == 0 and step + 1 < total:
            accel.wait_for_everyone()
            if accel.is_main_process:
                save_checkpoint(
                    ckpt_dir,
                    step + 1,
                    _trainable_state(accel.unwrap_model(model)),
                    optimizer.state_dict(),
                    settings_hash,
                    {"history": history},
                )
    accel.wait_for_everyone()
    if not accel.is_main_process:
        return None
    metrics = {
        "examples": len(examples),
        "steps": total,
        "resumed_from_step": start,
        "trainable_parameters": trainable,
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "target_share": cfg.target_share,
        "final_executed_share": history[-1]["share"] if history else None,
        "history": history,
    }
    with atomic_dir(out_dir) as tmp:
        accel.unwrap_model(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "metrics.json", metrics)
        run_info.write(tmp / "run_info.json", base_dir=str(base_dir))
    return metrics
