"""The draft tree as data, compiled once per step into what verification needs.

A tree is (tokens, parents) with node 0 the root (the token the target already chose,
not yet run through it) and every parent listed before its children. `compile_tree`
checks that and derives, in one place:

- `ancestors` [T, T] bool: node i sees node j iff j is i or an ancestor of i;
- `attn_bias` [T, T] float: 0 where visible, the dtype's minimum elsewhere (additive:
  boolean masks are silently wrong in eager attention);
- `depth` [T]: root 0; a node's position is the root's position + its depth;
- `retrieve` [n_leaves, max_depth + 1]: the root-to-leaf paths as node indices, padded
  with -1 (one row per leaf, leaves in node order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class TreeError(ValueError):
    """A malformed draft tree."""


@dataclass(frozen=True)
class DraftTree:
    tokens: torch.Tensor  # [T] int64, tokens[0] = root
    parents: torch.Tensor  # [T] int64, parents[0] = -1, parents[i] < i
    scores: torch.Tensor | None = None  # [T] draft cumulative log-probs (root 0), optional

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class CompiledTree:
    tree: DraftTree
    ancestors: torch.Tensor  # [T, T] bool
    attn_bias: torch.Tensor  # [T, T] float
    depth: torch.Tensor  # [T] int64
    retrieve: torch.Tensor  # [n_leaves, max_depth + 1] int64, -1 padded

    @property
    def tokens(self) -> torch.Tensor:
        return self.tree.tokens

    @property
    def parents(self) -> torch.Tensor:
        return self.tree.parents


def compile_tree(tree: DraftTree, dtype: torch.dtype = torch.float32) -> CompiledTree:
    tokens, parents = tree.tokens, tree.parents
    if tokens.ndim != 1 or parents.shape != tokens.shape:
        raise TreeError(f"tokens {tuple(tokens.shape)} and parents {tuple(parents.shape)} differ")
    size = tokens.shape[0]
    if size == 0 or int(parents[0]) != -1:
        raise TreeError("node 0 must be the root (parent -1)")
    idx = torch.arange(size, device=parents.device)
    if size > 1 and not bool(((parents[1:] >= 0) & (parents[1:] < idx[1:])).all()):
        raise TreeError("every node's parent must be listed before it (0 <= parent < node)")
    if size > 1:
        # Sibling tokens must differ: acceptance walks the tree by token.
        keys = parents[1:] * (int(tokens.max()) + 1) + tokens[1:]
        if keys.unique().numel() != size - 1:
            raise TreeError("two children of one node carry the same token")
    # Ancestor closure by pointer chasing: step h marks every node's h-th ancestor, so the
    # loop runs once per tree level, not once per node (vector ops; no host sync inside).
    ancestors = torch.eye(size, dtype=torch.bool, device=parents.device)
    depth = torch.zeros(size, dtype=torch.long, device=parents.device)
    up = parents.clone()
    for _ in range(size - 1):
        has = up >= 0
        if not bool(has.any()):
            break
        ancestors[idx[has], up[has]] = True
        depth += has.long()
        up = torch.where(has, parents[up.clamp(min=0)], up)
    bias = torch.zeros(size, size, dtype=dtype, device=parents.device)
    bias.masked_fill_(~ancestors, torch.finfo(dtype).min)
    is_leaf = torch.ones(size, dtype=torch.bool, device=parents.device)
    is_leaf[parents[1:]] = False
    leaves = idx[is_leaf]
    max_depth = int(depth.max())
    retrieve = torch.full(
        (leaves.numel(), max_depth + 1), -1, dtype=torch.long, device=parents.device
    )
    rows, cols = ancestors[leaves].nonzero(as_tuple=True)
    retrieve[rows, depth[cols]] = cols
    return CompiledTree(tree, ancestors, bias, depth, retrieve)
