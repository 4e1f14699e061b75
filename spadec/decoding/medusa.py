"""Medusa drafting for the speculative loop: a static sparse tree filled from the heads.

Medusa heads read the target's final-norm feature f_t of the last committed token x_t;
the target's own next token x_{t+1} (from lm_head(f_t)) is the tree's root, and head i
proposes x_{t+2+i}. The tree's shape comes from a choices list
(`spadec.decoding.medusa_trees`): choice (i_0, ..., i_{d-1}) is the node whose token is
head d-1's i_{d-1}-th candidate, below the node (i_0, ..., i_{d-2}). The shape is data,
built once per drafter (`MedusaTree`: parents, and for every node where to read its
token and its path's log-probs in the heads' top-k table); each step runs the heads once
and only fills tokens and scores in.

`MedusaDrafter` is a drafter of the generic loop (`spadec.decoding.loop`): verification
steps (`verify_all_layers`, SpaDec's `spadec_verify_step`) and acceptance rules
(`accept_lossless`; Medusa's lossy `accept_typical`) work on its trees as on EAGLE's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from spadec.decoding.loop import speculative_decode
from spadec.decoding.medusa_trees import (
    Choice,
    ChoicesError,
    named_tree,
    normalize_choices,
    ranks_per_depth,
)
from spadec.decoding.tree import DraftTree
from spadec.runtime.sampling import DecodeResult

# (features [..., d], lm_head) -> logits [num_heads, ..., V]; head i predicts x_{t+2+i}
MedusaHeadsFn = Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]


@dataclass(frozen=True)
class MedusaTree:
    """A choices list compiled to index data (CPU tensors; `to` moves them).

    Nodes: 0 is the root, then the choices sorted by (length, tuple). The heads' top-k
    table of a step is [depth, top_k] (row = head); `pick` [T-1] indexes its flattened
    form for every drafted node's token, `path_pick` [T, depth] the entries summed into
    every node's cumulative log-prob (padding points at an extra zero slot).
    """

    choices: tuple[Choice, ...]
    parents: torch.Tensor  # [T] int64, -1 for the root
    depth: torch.Tensor  # [T] int64
    top_k: int  # candidates taken from each head
    pick: torch.Tensor  # [T-1] int64 into the flattened [depth, top_k] table
    path_pick: torch.Tensor  # [T, depth] int64 into that table + one zero slot

    @classmethod
    def build(cls, choices: Sequence[Sequence[int]], top_k: int | None = None) -> MedusaTree:
        ordered = normalize_choices(choices)
        if not ordered:
            raise ChoicesError("a Medusa tree needs at least one choice")
        needed = max(ranks_per_depth(ordered))
        k = needed if top_k is None else top_k
        if k < needed:
            raise ChoicesError(f"top_k {top_k} < {needed}, the largest rank used + 1")
        index = {c: i + 1 for i, c in enumerate(ordered)}
        max_depth = max(len(c) for c in ordered)
        pad = max_depth * k  # the zero slot after the flattened table
        parents = [-1] + [index.get(c[:-1], 0) for c in ordered]
        path_pick = [[pad] * max_depth] + [
            [d * k + r for d, r in enumerate(c)] + [pad] * (max_depth - len(c)) for c in ordered
        ]
        return cls(
            choices=ordered,
            parents=torch.tensor(parents, dtype=torch.long),
            depth=torch.tensor([0] + [len(c) for c in ordered], dtype=torch.long),
            top_k=k,
            pick=torch.tensor([(len(c) - 1) * k + c[-1] for c in ordered], dtype=torch.long),
            path_pick=torch.tensor(path_pick, dtype=torch.long),
        )

    @property
    def size(self) -> int:
        """Nodes, the root included."""
        return int(self.parents.numel())

    @property
    def max_depth(self) -> int:
        return int(self.path_pick.shape[1])

    def to(self, device: torch.device) -> MedusaTree:
        return MedusaTree(
            self.choices,
            self.parents.to(device),
            self.depth.to(device),
            self.top_k,
            self.pick.to(device),
            self.path_pick.to(device),
        )

    def fill(self, root: int, head_logits: torch.Tensor) -> DraftTree:
        """The step's tree from the heads' logits [>= depth, V] at the last feature."""
        if head_logits.shape[0] < self.max_depth:
            raise ValueError(
                f"the tree is {self.max_depth} deep but the heads give "
                f"{head_logits.shape[0]} predictions"
            )
        vocab = head_logits.shape[-1]
        if vocab < self.top_k:
            raise ValueError(f"top_k {self.top_k} exceeds the vocabulary ({vocab})")
        logp = torch.log_softmax(head_logits[: self.max_depth].float(), dim=-1)
        top_logp, top_tok = logp.topk(self.top_k, dim=-1)  # [depth, k]
        tokens = torch.cat(
            [torch.tensor([root], device=top_tok.device), top_tok.flatten()[self.pick]]
        )
        table = torch.cat([top_logp.flatten(), top_logp.new_zeros(1)])
        scores = table[self.path_pick].sum(dim=1)  # cumulative log-probs, root 0
        return DraftTree(tokens, self.parents, scores)


def as_tree(choices, top_k: int | None = None) -> MedusaTree:
    """A `MedusaTree` from a tree name (`medusa_trees.TREES`), a choices list or a tree."""
    if isinstance(choices, MedusaTree):
        return choices
    if isinstance(choices, str):
        choices = named_tree(choices)
    return MedusaTree.build(choices, top_k)


class MedusaDrafter:
    """Medusa drafting state for one generation: the heads, the static tree and the
    target's feature of the last committed token."""

    def __init__(
        self,
        heads: MedusaHeadsFn,
        lm_head: torch.nn.Module,
        choices: str | Sequence[Sequence[int]] | MedusaTree,
        top_k: int | None = None,
    ):
        self.heads, self.lm_head = heads, lm_head
        self.tree = as_tree(choices, top_k)
        self._on: dict[torch.device, MedusaTree] = {}
        self.last: torch.Tensor | None = None
        self.forwards = 0

    def observe(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Keep the target's feature of the last committed token (the heads need no
        history: they read one feature)."""
        self.last = features[-1].clone()

    def draft(self, root: int) -> DraftTree:
        if self.last is None:
            raise RuntimeError("draft() before observe(): no target feature yet")
        device = self.last.device
        if device not in self._on:
            self._on[device] = self.tree.to(device)
        head_logits = self.heads(self.last[None], self.lm_head)[:, 0]  # [heads, V]
        self.forwards += 1
        return self._on[device].fill(root, head_logits)


@torch.inference_mode()
def medusa_decode(
    target, heads: MedusaHeadsFn, input_ids: torch.Tensor, choices, *args, **kwargs
) -> DecodeResult:
    """Medusa decoding of `input_ids` [1, n] with `heads` drafting for `target` on the
    tree `choices` (a name, a choices list or a `MedusaTree`); the remaining arguments are
    `speculative_decode`'s (max_new_tokens, eos_token_id, temperature, generator,
    verify_step, on_step, step_timing, sync_timing, acceptance). Lossless with the default
    acceptance; `acceptance=accept_typical()` is Medusa's own (lossy above T = 0)."""
    drafter = MedusaDrafter(heads, target.lm_head, choices)
    return speculative_decode(target, drafter, input_ids, *args, **kwargs)


@torch.no_grad()
def head_rank_accuracy(
    head_logits: torch.Tensor, future: torch.Tensor, top_k: int
) -> list[list[float]]:
    """How often head i's rank-j candidate is the right token: head_logits [H, n, V] at n
    positions, future [H, n] the true token head i should predict there (< 0: no token,
    e.g. past the end). Marginal rates (not conditioned on the path above being right),
    as Medusa calibrates its trees; feed them to `medusa_trees.sparse_tree`."""
    top = head_logits.topk(top_k, dim=-1).indices  # [H, n, k]
    valid = future >= 0  # [H, n]
    hit = (top == future[..., None]) & valid[..., None]
    counts = valid.sum(dim=1).clamp(min=1)
    return (hit.sum(dim=1).double() / counts[:, None]).tolist()
