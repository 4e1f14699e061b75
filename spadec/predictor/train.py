"""Train the acceptance predictor: logistic regression, BCE-with-logits, class weighting.

Samples are split into train / held-out by prompt (a seeded shuffle), so nodes of one
generation never sit on both sides. Positives (nodes on the accepted path) are weighted
by negatives / positives. Full-batch Adam in fp32 on standardised inputs; the learned
affine map is folded back so the saved predictor reads raw layer-K hidden states.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from spadec.predictor.data import read_shards
from spadec.predictor.metrics import above_tree_mean, calibration, precision_recall, roc_auc
from spadec.predictor.model import AcceptancePredictor, save_predictor
from spadec.provenance import RunInfo

log = logging.getLogger(__name__)


def split_by_sample(samples: torch.Tensor, heldout_fraction: float, seed: int):
    ids = sorted(set(samples.tolist()))
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, round(len(ids) * heldout_fraction))]) if len(ids) > 1 else set()
    mask = torch.tensor([s in held for s in samples.tolist()], dtype=torch.bool)
    return ~mask, mask


def evaluate(model: AcceptancePredictor, data: dict, mask: torch.Tensor) -> dict:
    with torch.no_grad():
        probs = model(data["features"][mask], data["draft"][mask])
    labels = data["labels"][mask]
    trees = data["sample"][mask].long() * 1_000_000 + data["step"][mask].long()
    return {
        "nodes": int(mask.sum()),
        "positive_share": float(labels.float().mean()),
        "auc": roc_auc(probs, labels),
        "at_0.5": precision_recall(probs >= 0.5, labels),
        "at_tree_mean": precision_recall(above_tree_mean(probs, trees), labels),
        "calibration": calibration(probs, labels),
    }


def train_predictor(settings: dict, shard_dirs: list, out_dir: str | Path) -> dict:
    run_info = RunInfo("train_predictor", settings)
    data = read_shards(shard_dirs)
    data["features"] = data["features"].float()
    train, held = split_by_sample(data["sample"], settings["heldout_fraction"], settings["seed"])
    use_draft = settings["draft_features"]
    inputs = torch.cat([data["features"], data["draft"]], -1) if use_draft else data["features"]
    x, y = inputs[train], data["labels"][train].float()
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("predictor training data has a single class; generate more data")
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    torch.manual_seed(settings["seed"])
    linear = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.Adam(
        linear.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"]
    )
    pos_weight = (len(y) - y.sum()) / y.sum()
    z = (x - mean) / std
    t0 = time.perf_counter()
    history = []
    for epoch in range(settings["epochs"]):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(linear(z)[:, 0], y, pos_weight=pos_weight)
        loss.backward()
        opt.step()
        if (epoch + 1) % max(1, settings["epochs"] // 10) == 0:
            history.append({"epoch": epoch + 1, "loss": round(loss.item(), 5)})
    model = AcceptancePredictor(data["features"].shape[1], settings["layer_k"], use_draft)
    with torch.no_grad():  # w.(h - mean)/std + b  ==  (w/std).h + (b - w.mean/std)
        w = linear.weight[0] / std
        model.linear.weight.copy_(w[None])
        model.linear.bias.copy_(linear.bias - (w * mean).sum())
    metrics = {
        "layer_k": settings["layer_k"],
        "draft_features": use_draft,
        "train": evaluate(model, data, train),
        "heldout": evaluate(model, data, held),
        "pos_weight": float(pos_weight),
        "history": history,
        "train_wall_s": round(time.perf_counter() - t0, 2),
    }
    log.info(
        "predictor held-out AUC %.3f (train %.3f), precision/recall at tree mean %.3f / %.3f",
        metrics["heldout"]["auc"],
        metrics["train"]["auc"],
        metrics["heldout"]["at_tree_mean"]["precision"],
        metrics["heldout"]["at_tree_mean"]["recall"],
    )
    save_predictor(model, out_dir, {"metrics.json": metrics, "run_info.json": run_info.as_dict()})
    return metrics
