"""The EAGLE head's training loss, shared by the training loop and held-out evaluation.

    vloss = sum_t m_t * mean_d SmoothL1(pred_t - target_t) / sum_t m_t
    ploss = -sum_t m_t * sum_v softmax(W_lm target_t)_v * log_softmax(W_lm pred_t)_v / sum_t m_t
    loss  = value_weight * vloss + prob_weight * ploss

m marks answer positions (padding and prompt never count, unlike upstream's B*L
normalisation); W_lm is the target's LM head (its embedding when tied), a frozen fp32
tensor read straight from the target's safetensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
