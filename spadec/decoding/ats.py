"""Acceptance-guided tree selection (ATS), vectorised: no per-node host syncs.

Given the predictor's probabilities p [T] for the nodes of a compiled tree:
1. prune: a node whose p is below `prune_scale` times the tree's mean is removed with its
   whole subtree (the root always stays); scale 1 is the published rule, a larger scale
   keeps fewer nodes (fewer tokens vote on each layer, at some cost in tau);
2. best path: among the surviving nodes, the root-to-node path maximising
   sum p_n * w(depth_n), w(d) = ln(d + 1) for d < acc_length, else sech(d - acc_length)
   (all terms are >= 0, so the best path ends at a leaf of the surviving tree and equals
   the published depth-weighted DP; ties go to the lower node index).

Modes: `prune` verifies the surviving subtree only (lossless: acceptance never leaves the
verified nodes); `steer` verifies the whole tree but lets only the best path vote on
whether a layer runs at all (the published code's semantics; lossy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spadec.decoding.tree import CompiledTree

MODES = ("prune", "steer")
# depth up to which w(d) grows (the published code's and the schema's default)
DEFAULT_ACC_LENGTH = 3
# prune below this multiple of the tree's mean probability (the published rule: 1)
DEFAULT_PRUNE_SCALE = 1.0


@dataclass(frozen=True)
class Selection:
    keep: torch.Tensor  # [T] bool: the surviving subtree
    path: torch.Tensor  # [T] bool: the depth-weighted best path (root included)


def depth_weights(depth: torch.Tensor, acc_length: int = DEFAULT_ACC_LENGTH) -> torch.Tensor:
    d = depth.float()
    near = torch.log(d + 1)
    far = 1 / torch.cosh(d - acc_length)
    return torch.where(depth < acc_length, near, far)


def select(
    compiled: CompiledTree,
    probs: torch.Tensor,
    acc_length: int = DEFAULT_ACC_LENGTH,
    prune_scale: float = DEFAULT_PRUNE_SCALE,
) -> Selection:
    anc = compiled.ancestors.float()  # [T, T], row i = i and its ancestors
    below = (probs < prune_scale * probs.mean()).float()
    below[0] = 0.0  # the root is never pruned
    keep = (anc @ below) == 0  # no node on the way from the root is below the mean
    gain = probs.float() * depth_weights(compiled.depth, acc_length)
    score = torch.where(keep, anc @ gain, torch.full_like(gain, -math.inf))
    best = score.argmax()
    return Selection(keep, compiled.ancestors[best])
