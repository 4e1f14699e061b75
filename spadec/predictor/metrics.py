"""Binary-classifier metrics for the predictor: ROC AUC, precision/recall, calibration."""

from __future__ import annotations

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann-Whitney AUC with tie-averaged ranks; nan if one class is absent."""
    labels = labels.bool()
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = scores.double().argsort()
    sorted_scores = scores.double()[order]
    ranks = torch.empty_like(sorted_scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    mean_rank = first.double() + (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def precision_recall(predicted: torch.Tensor, labels: torch.Tensor) -> dict:
    predicted, labels = predicted.bool(), labels.bool()
    tp = int((predicted & labels).sum())
    return {
        "precision": tp / max(1, int(predicted.sum())),
        "recall": tp / max(1, int(labels.sum())),
        "selected_share": float(predicted.float().mean()),
    }


def calibration(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> dict:
    """Expected calibration error and the reliability table (equal-width bins)."""
    probs, labels = probs.double(), labels.double()
    idx = (probs * bins).long().clamp(max=bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        if n == 0:
            continue
        conf, acc = float(probs[sel].mean()), float(labels[sel].mean())
        ece += n / len(probs) * abs(conf - acc)
        table.append(
            {"bin": b, "n": n, "mean_prob": round(conf, 4), "positive_rate": round(acc, 4)}
        )
    return {"ece": ece, "reliability": table}


def above_tree_mean(probs: torch.Tensor, tree_ids: torch.Tensor) -> torch.Tensor:
    """ATS's operating point: a node is kept when its probability is at least the mean of
    its own tree (subtree closure left out here)."""
    uniq, inverse = torch.unique(tree_ids, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, probs.double())
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
        0, inverse, torch.ones_like(probs, dtype=torch.float64)
    )
    return probs.double() >= (sums / counts)[inverse]
