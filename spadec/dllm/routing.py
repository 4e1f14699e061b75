"""How a D-LLM's routers decide, measured on a matrix of per-token decisions.

A D-LLM is meant to decide per token which layers to run. Routers that learnt to prune the
same layers for every token have nothing for SpaDec's predictor and ATS to win back. These
measures tell the two apart; they take `gates` [tokens, layers] in {0, 1} (1 = executed) of
routed tokens only (the reserved initial positions run every layer by rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# A layer whose execution rate lies in this band is run by some tokens and skipped by
# others often enough to call its routing token-dependent.
TOKEN_DEPENDENT_BAND = (0.1, 0.9)


def routing_measures(gates: torch.Tensor, dynamic_layers: Sequence[int]) -> dict:
    """Execution rates, token dependence and the spread of the per-token executed share.

    - `layer_execution_rate`: per layer, the share of tokens that executed it;
    - `token_dependent_layers`: dynamic layers whose rate lies in TOKEN_DEPENDENT_BAND;
    - `modal_set_disagreement`: share of tokens whose set of executed dynamic layers is not
      the most common set; `modal_set_distance`: dynamic layers per token that differ from it;
    - `distinct_layer_sets`: how many different sets the tokens used;
    - `token_share_std`, `token_share_p10`, `token_share_p90`: spread of the per-token
      executed share (all layers), which a per-token share target pins to one value;
    - `executed_layers_histogram`: how many tokens executed 0, 1, ..., L layers.
    """
    if gates.ndim != 2 or gates.shape[0] == 0:
        raise ValueError(
            f"gates must be [tokens, layers] with tokens > 0, got {tuple(gates.shape)}"
        )
    g = gates.float()
    dynamic = list(dynamic_layers)
    rate = g.mean(0)
    dyn = g[:, dynamic] > 0.5
    lo, hi = TOKEN_DEPENDENT_BAND
    dyn_rate = rate[dynamic]
    dependent = int(((dyn_rate >= lo) & (dyn_rate <= hi)).sum()) if dynamic else 0
    if dynamic:
        sets, counts = torch.unique(dyn, dim=0, return_counts=True)
        modal = sets[counts.argmax()]
        differing = (dyn != modal).float()
        disagreement = differing.any(1).float().mean().item()
        distance = differing.sum(1).mean().item()
        distinct = int(sets.shape[0])
    else:
        disagreement, distance, distinct = 0.0, 0.0, 1
    share = g.mean(1)
    executed = torch.bincount(g.sum(1).round().long(), minlength=g.shape[1] + 1)
    return {
        "tokens": int(g.shape[0]),
        "executed_share": round(share.mean().item(), 4),
        "layer_execution_rate": [round(x, 4) for x in rate.tolist()],
        "dynamic_layers": len(dynamic),
        "token_dependent_layers": dependent,
        "token_dependent_fraction": round(dependent / len(dynamic), 4) if dynamic else 0.0,
        "modal_set_disagreement": round(disagreement, 4),
        "modal_set_distance": round(distance, 4),
        "distinct_layer_sets": distinct,
        "token_share_std": round(share.std(correction=0).item(), 4),
        "token_share_p10": round(torch.quantile(share, 0.1).item(), 4),
        "token_share_p90": round(torch.quantile(share, 0.9).item(), 4),
        # tokens that executed 0, 1, ..., L layers
        "executed_layers_histogram": executed.tolist(),
    }
