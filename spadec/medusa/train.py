"""Train Medusa heads with DeepSpeed (ZeRO-2), resumably, on the EAGLE data shards.

The shards hold, per sample, the token ids x, the target's final-norm features f and the
answer mask m (spadec.eagle.data). The target's LM head predicts x_{t+1} from f_t; head
i (from 0) learns x_{t+2+i}:

    CE_i = sum_t m_{t+2+i} * CE(head_i(f_t), x_{t+2+i}) / sum_t m_{t+2+i}
    loss = sum_i decay^i * CE_i                      (decay 0.8, as Medusa)

so only answer tokens are targets (the prompt is context). Medusa-1 heads train their
own projection, initialised from the target's LM head; Medusa-2-format heads
(own_projection false) draft through the target's frozen LM head, which stays outside
DeepSpeed. The run (spadec.eagle.train.train_module: plan, engine, step loop with its
batch order, per-step seeding, logging, checkpoints and resume, fp32 weights, metrics and
output) is the EAGLE trainer's, so a killed run resumes to the unbroken run's weights in
the same way. Held-out samples
(a seeded shuffle, `heldout_fraction`) score each head's top-1 / top-5 agreement.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from spadec.eagle.data import ShardReader
from spadec.eagle.ds_runtime import EagleTrainError, all_sum
from spadec.eagle.train import (
    CADENCE_KEYS,
    check_precision,
    open_data,
    train_keys,
    train_module,
)
from spadec.medusa.heads import MedusaConfig, init_heads, save_heads
from spadec.provenance import RunInfo

log = logging.getLogger(__name__)

STAGE = "train_medusa"
TOP_K = 5
# The settings that shape the trained heads (and so the checkpoint hash): STAGE_PARTS'
# medusa.train and the seed; the log and checkpoint cadence (CADENCE_KEYS) may change
# without discarding a checkpoint.
TRAIN_KEYS = train_keys("medusa")


class MedusaTrainError(EagleTrainError):
    """Settings, target or data the Medusa trainer cannot work with."""


# ----------------------------------------------------------------------------- data


def medusa_targets(sample, max_len: int, num_heads: int) -> dict[str, torch.Tensor]:
    """One sample as (features f_t [L, d], labels [K, L], mask [K, L]): head i's label at
    t is x_{t+2+i}, counted when that token is part of the answer and inside the sample.
    `next_label` / `next_mask` are the LM head's x_{t+1} (for the held-out reference)."""
    f = sample.features[:max_len].float()
    ids = sample.input_ids[:max_len]
    answer = sample.loss_mask[:max_len].float()
    length = f.shape[0]
    labels = torch.zeros(num_heads + 1, length, dtype=torch.long)
    mask = torch.zeros(num_heads + 1, length)
    for j in range(num_heads + 1):  # j = 0: the LM head's t+1; j = i + 1: head i's t+2+i
        shift = j + 1
        if shift < length:
            labels[j, : length - shift] = ids[shift:]
            mask[j, : length - shift] = answer[shift:]
    return {
        "features": f,
        "labels": labels[1:],
        "mask": mask[1:],
        "next_label": labels[0],
        "next_mask": mask[0],
    }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad to [B, L, d] features and [K, B, L] labels and masks (padding masked)."""
    width = max(it["features"].shape[0] for it in items)
    d = items[0]["features"].shape[1]
    k = items[0]["labels"].shape[0]
    out = {
        "features": torch.zeros(len(items), width, d),
        "labels": torch.zeros(k, len(items), width, dtype=torch.long),
        "mask": torch.zeros(k, len(items), width),
        "next_label": torch.zeros(len(items), width, dtype=torch.long),
        "next_mask": torch.zeros(len(items), width),
    }
    for row, it in enumerate(items):
        n = it["features"].shape[0]
        out["features"][row, :n] = it["features"]
        out["labels"][:, row, :n] = it["labels"]
        out["mask"][:, row, :n] = it["mask"]
        out["next_label"][row, :n] = it["next_label"]
        out["next_mask"][row, :n] = it["next_mask"]
    return out


def _batch(reader: ShardReader, indices: list[int], settings: dict, device) -> dict:
    items = [medusa_targets(reader[i], settings["max_len"], settings["num_heads"]) for i in indices]
    return {k: v.to(device) for k, v in collate(items).items()}


# ----------------------------------------------------------------------------- loss


def medusa_losses(
    heads, features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, w_lm, top_k=TOP_K
) -> dict[str, torch.Tensor]:
    """Per-head masked sums: ce_sum [K] (differentiable), count [K], topk hits [K, top_k].

    features [B, L, d]; labels, mask [K, B, L]. Only positions some head counts are
    projected onto the vocabulary (K * B * L * V logits would dwarf the heads).
    `heads` is the module or its DeepSpeed engine; `w_lm` the target's LM head weight,
    used by Medusa-2-format heads."""
    keep = (mask > 0).any(0)  # [B, L]
    x = features[keep]  # [N, d]
    logits = heads(x, lm_head=w_lm).float()  # [K, N, V]
    lab, m = labels[:, keep], mask[:, keep]  # [K, N]
    ce = F.cross_entropy(logits.flatten(0, 1), lab.flatten(), reduction="none")
    ce_sum = (ce.view_as(m) * m).sum(-1)
    with torch.no_grad():
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices  # [K, N, k]
        # hits[:, j]: label within the top j+1 (cumulative over ranks)
        hits = ((top == lab[..., None]).cumsum(-1) * m[..., None]).sum(1)
    # logits.sum() * 0: an all-prompt micro-batch still reaches every parameter, which
    # ZeRO-2's gradient hooks expect.
    return {"ce_sum": ce_sum + logits.sum() * 0, "count": m.sum(-1), "hits": hits}


def combined_loss(sums: dict, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i decay^i * CE_i, CE [K]) from medusa_losses' sums."""
    ce = sums["ce_sum"] / sums["count"].clamp(min=1)
    weights = decay ** torch.arange(ce.shape[0], device=ce.device, dtype=ce.dtype)
    return (weights * ce).sum(), ce


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(heads, reader, indices, settings, w_lm, rank, world) -> dict:
    """Held-out CE and top-1 / top-5 agreement of each head with x_{t+2+i} (and of the
    target's LM head with x_{t+1}, the reference the heads build on).

    Each rank scores its share of `indices`; the sums are added over ranks."""
    heads.eval()
    device = w_lm.device
    k = settings["num_heads"]
    ce = torch.zeros(k, dtype=torch.float64, device=device)
    count = torch.zeros(k, dtype=torch.float64, device=device)
    hits = torch.zeros(k, TOP_K, dtype=torch.float64, device=device)
    lm = torch.zeros(2, dtype=torch.float64, device=device)  # LM head top-1 hits, positions
    micro = settings["micro_batch"]
    mine = indices[rank::world]
    dtype = next(heads.parameters()).dtype
    for first in range(0, len(mine), micro):
        batch = _batch(reader, mine[first : first + micro], settings, device)
        feats = batch["features"].to(dtype)
        out = medusa_losses(heads, feats, batch["labels"], batch["mask"], w_lm.to(dtype))
        ce += out["ce_sum"].double()
        count += out["count"].double()
        hits += out["hits"].double()
        keep = batch["next_mask"] > 0
        pred = (batch["features"][keep] @ w_lm.T).argmax(-1)
        lm += torch.stack([(pred == batch["next_label"][keep]).sum(), keep.sum()]).double()
    sums = all_sum([*ce.tolist(), *count.tolist(), *hits.flatten().tolist(), *lm.tolist()], device)
    ce_s, count_s = sums[:k], sums[k : 2 * k]
    hits_s = [sums[2 * k + i * TOP_K : 2 * k + (i + 1) * TOP_K] for i in range(k)]
    lm_hits, lm_n = sums[-2:]

    def ratio(a, n):
        return round(a / n, 6) if n else None

    per_ce = [ratio(c, n) for c, n in zip(ce_s, count_s, strict=True)]
    weighted = (
        round(sum(settings["decay"] ** i * c for i, c in enumerate(per_ce)), 6)
        if None not in per_ce
        else None
    )
    return {
        "positions": [int(n) for n in count_s],
        "loss": weighted,
        "ce": per_ce,
        "top1": [ratio(h[0], n) for h, n in zip(hits_s, count_s, strict=True)],
        "top5": [ratio(h[-1], n) for h, n in zip(hits_s, count_s, strict=True)],
        "lm_head_top1": ratio(lm_hits, lm_n),
    }


# ----------------------------------------------------------------------------- training


def _check_settings(settings: dict) -> None:
    missing = [k for k in (*TRAIN_KEYS, *CADENCE_KEYS) if k not in settings]
    if missing:
        raise MedusaTrainError(f"medusa settings lack {', '.join(missing)}")
    check_precision(settings)


def _micro_step(engine, reader, settings, w_lm):
    """One micro-step's (loss, CE_0, ..., CE_{K-1}) on the samples `idx`."""
    device = engine.device
    dtype = next(engine.module.parameters()).dtype
    w = w_lm.to(dtype)

    def micro_step(idx: list[int]) -> tuple[torch.Tensor, ...]:
        batch = _batch(reader, idx, settings, device)
        sums = medusa_losses(engine, batch["features"].to(dtype), batch["labels"], batch["mask"], w)
        loss, ce = combined_loss(sums, settings["decay"])
        return (loss, *ce.unbind())

    return micro_step


def train_heads(
    settings: dict,
    target_dir: str | Path,
    shard_dirs: list,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    ds_config_path: str | Path,
) -> dict | None:
    """Train Medusa heads on `shard_dirs`; rank 0 writes `out_dir` (config.json,
    model.safetensors, metrics.json, run_info.json) and returns the metrics."""
    _check_settings(settings)
    run_info = RunInfo(STAGE, settings)
    shard_dirs = [Path(d) for d in shard_dirs]
    reader, config, _, lm_head = open_data(shard_dirs, target_dir)
    try:
        heads_config = MedusaConfig(
            num_heads=settings["num_heads"],
            num_blocks=settings["num_blocks"],
            hidden_size=config.hidden_size,
            vocab_size=lm_head.shape[0],
            own_projection=settings["own_projection"],
        )
    except ValueError as err:
        raise MedusaTrainError(f"medusa settings: {err}") from None
    k = heads_config.num_heads
    names = ("loss", *(f"ce_{i}" for i in range(k)))
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
        build=lambda: init_heads(heads_config, lm_head),
        micro_step=_micro_step,
        names=names,
        describe=lambda e: (
            f"loss {e['loss']:.4f} (CE " + ", ".join(f"{e[n]:.3f}" for n in names[1:]) + ")"
        ),
        evaluate=evaluate,
        held_keys=("top1", "top5"),
        save=save_heads,
        intro=f"{k} {heads_config.format} heads x {heads_config.num_blocks} block(s); ",
        head_metrics={
            "format": heads_config.format,
            "num_heads": k,
            "num_blocks": heads_config.num_blocks,
        },
        logger=log,
    )
    if metrics is not None:
        log.info(
            "held-out top-1 per head %s, top-5 %s; heads written to %s",
            metrics["heldout"]["top1"],
            metrics["heldout"]["top5"],
            out_dir,
        )
    return metrics
