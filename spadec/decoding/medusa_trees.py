"""Medusa's static sparse trees as data: choices lists, and a generator of new ones.

A choice is a tuple of candidate ranks `(i_0, ..., i_{d-1})`: the depth-1 node is head 0's
`i_0`-th most likely token, its child head 1's `i_1`-th, and so on; the root above them
all is the target's own next token. A choices list names every node of the tree once and
holds each node's parent (its tuple minus the last rank).

- `MC_SIM_7B_63`: the tree of the Medusa paper and repository (FasterDecoding/Medusa,
  `medusa_choices.py`), 63 nodes below the root: 10 / 28 / 23 / 2 at depths 1-4, 42
  leaves, top-10 of heads 1-3 and top-2 of head 4. Written down from memory and checked
  element by element against published copies of the list.
- `CHAIN_4`, `SMALL_10`, `SMALL_16`: small hand-made trees for CPU runs and tests (ours,
  not published).
- `sparse_tree(acceptance, n_nodes)`: Medusa's construction idea (the paper, section on
  optimised tree structure): with an estimate of how often head i's rank-j candidate is
  right, a node's chance of being accepted is the product along its path, and the best
  tree of N nodes keeps the N most likely nodes (a product never grows along a path, so
  the set is closed under parents). Greedy best-first; the acceptance numbers come from a
  measurement (`spadec.decoding.medusa.head_rank_accuracy`) or, for a quick tree with no
  measurement, `prior_acceptance` - a made-up geometric prior, not a measurement.

Torch-free, so configs can be checked without importing torch.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

Choice = tuple[int, ...]

# fmt: off
MC_SIM_7B_63: tuple[Choice, ...] = tuple(map(tuple, [
    [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4],
    [2, 0], [0, 5], [0, 0, 1], [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8],
    [0, 0, 2], [3, 0], [0, 9], [8], [9], [1, 0, 0], [0, 2, 0], [1, 2], [0, 0, 3], [4, 0],
    [2, 1], [0, 0, 4], [0, 0, 5], [0, 0, 0, 0], [0, 1, 1], [0, 0, 6], [0, 3, 0], [5, 0],
    [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9], [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 2],
    [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0], [1, 5], [1, 0, 1], [0, 2, 1], [9, 0],
    [0, 6, 0], [0, 0, 0, 1], [1, 6], [0, 7, 0],
]))

# one candidate per head: a 4-token chain (what a single draft sequence would verify)
CHAIN_4: tuple[Choice, ...] = ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0))

SMALL_10: tuple[Choice, ...] = (
    (0,), (1,), (2,),
    (0, 0), (0, 1), (1, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0),
    (0, 0, 0, 0),
)

SMALL_16: tuple[Choice, ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1),
)
# fmt: on

TREES: dict[str, tuple[Choice, ...]] = {
    "mc_sim_7b_63": MC_SIM_7B_63,
    "chain_4": CHAIN_4,
    "small_10": SMALL_10,
    "small_16": SMALL_16,
}


class ChoicesError(ValueError):
    """A malformed choices list."""


def named_tree(name: str) -> tuple[Choice, ...]:
    if name not in TREES:
        raise ChoicesError(f"unknown Medusa tree {name!r} (known: {', '.join(TREES)})")
    return TREES[name]


def normalize_choices(choices: Iterable[Sequence[int]]) -> tuple[Choice, ...]:
    """Choices as tuples sorted by (length, tuple), so that every parent precedes its
    children; checks that ranks are >= 0, that no node repeats and that every node's
    parent is in the list."""
    given = [tuple(int(i) for i in c) for c in choices]
    out = sorted(set(given), key=lambda c: (len(c), c))
    if len(out) != len(given):
        raise ChoicesError("a choice is listed twice")
    known = set(out)
    for c in out:
        if not c:
            raise ChoicesError("an empty choice (the root is implicit)")
        if min(c) < 0:
            raise ChoicesError(f"choice {c} has a negative rank")
        if len(c) > 1 and c[:-1] not in known:
            raise ChoicesError(f"choice {c} has no parent {c[:-1]} in the list")
    return tuple(out)


def ranks_per_depth(choices: Sequence[Sequence[int]]) -> list[int]:
    """Candidates each head must offer: the largest rank used at each depth + 1."""
    depth = max((len(c) for c in choices), default=0)
    return [1 + max(c[d] for c in choices if len(c) > d) for d in range(depth)]


def sparse_tree(acceptance: Sequence[Sequence[float]], n_nodes: int) -> tuple[Choice, ...]:
    """The `n_nodes` choices with the highest estimated acceptance, greedily.

    `acceptance[i][j]` estimates how often head i's rank-j candidate is the right token
    (given the path above it was right). A node's estimate is the product along its path;
    nodes are added best first (ties: shorter, then smaller tuple), each added node
    offering its children as candidates. Depth is bounded by the number of heads, the
    branching by the ranks given. Returns the choices sorted by (length, tuple).
    """
    if n_nodes < 0:
        raise ChoicesError(f"n_nodes {n_nodes} < 0")
    if any(not row for row in acceptance):
        raise ChoicesError("every head needs at least one rank estimate")
    if any(not 0.0 <= p <= 1.0 for row in acceptance for p in row):
        raise ChoicesError("acceptance estimates must lie in [0, 1]")
    num_heads = len(acceptance)
    heap: list[tuple[float, int, Choice]] = []

    def offer(parent: Choice, value: float) -> None:
        depth = len(parent)
        if depth < num_heads:
            for rank, p in enumerate(acceptance[depth]):
                child = (*parent, rank)
                heapq.heappush(heap, (-value * p, len(child), child))

    offer((), 1.0)
    chosen: list[Choice] = []
    while heap and len(chosen) < n_nodes:
        neg, _, node = heapq.heappop(heap)
        chosen.append(node)
        offer(node, -neg)
    return normalize_choices(chosen)


def prior_acceptance(
    num_heads: int, top_k: int, first: float = 0.6, head_decay: float = 0.8, rank_decay: float = 0.5
) -> list[list[float]]:
    """A made-up prior, not a measurement: head i's top-1 is right with probability
    `first * head_decay**i`, each further rank `rank_decay` times as often. Only for a
    quick tree when no measured `head_rank_accuracy` exists."""
    return [[first * head_decay**i * rank_decay**j for j in range(top_k)] for i in range(num_heads)]
