"""Which drafted nodes the target accepts, and the token it adds after them.

Greedy: node c (child of p) is correct when its token is the target's argmax at p; the
accepted path is the longest root-to-node chain of correct nodes (siblings carry
different tokens, so it is unique), and the bonus token is the argmax at its end.

Sampling (EAGLE-2's multi-candidate rejection with a deterministic draft): at an
accepted node with target distribution p, try its children in order; accept child x
with probability p(x), else set p(x) = 0 and renormalise; if all are rejected, the bonus
token is drawn from what is left of p. Each step samples exactly from p, so the output
has the target's own sampling distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spadec.decoding.tree import CompiledTree


@dataclass(frozen=True)
class Acceptance:
    path: torch.Tensor  # [a + 1] accepted node indices, root first
    next_token: int  # the target's token after the path (the next root)

    @property
    def accepted(self) -> int:
        """Draft tokens accepted (the root is not a draft)."""
        return int(self.path.numel()) - 1


def accept_greedy(
    compiled: CompiledTree, logits: torch.Tensor, verified: torch.Tensor | None = None
) -> Acceptance:
    """logits [T, V] of every tree node (node order); `verified` [T] bool marks the nodes
    the target actually ran (None: all) - an unverified node is never accepted."""
    best_tok = logits.argmax(dim=-1)
    tokens, parents = compiled.tokens, compiled.parents
    correct = torch.ones_like(tokens, dtype=torch.bool)
    correct[1:] = tokens[1:] == best_tok[parents[1:]]
    if verified is not None:
        correct &= verified
    paths = compiled.retrieve
    ok = torch.where(paths >= 0, correct[paths.clamp(min=0)], torch.zeros_like(paths, dtype=bool))
    lengths = ok.long().cumprod(dim=1).sum(dim=1)
    row = int(lengths.argmax())
    path = paths[row, : int(lengths[row])]
    return Acceptance(path, int(best_tok[path[-1]]))


def target_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The target's sampling distribution(s) from logits [..., V]."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def accept_sampling(
    compiled: CompiledTree,
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
    verified: torch.Tensor | None = None,
) -> Acceptance:
    probs = target_probs(logits, temperature).cpu()
    tokens = compiled.tokens.tolist()
    parents = compiled.parents.tolist()
    ran = [True] * len(tokens) if verified is None else verified.tolist()
    children: dict[int, list[int]] = {}
    for node in range(1, len(tokens)):
        if ran[node]:
            children.setdefault(parents[node], []).append(node)
    path = [0]
    node = 0
    while True:
        p = probs[node].clone()
        moved = False
        for child in children.get(node, []):
            x = tokens[child]
            u = float(torch.rand((), generator=generator))
            if u < float(p[x]):
                path.append(child)
                node = child
                moved = True
                break
            rest = p.clone()
            rest[x] = 0.0
            total = float(rest.sum())
            if total <= 0.0:  # p(x) was 1 up to rounding: x is the only possible token
                path.append(child)
                node = child
                moved = True
                break
            p = rest / total
        if not moved:
            next_token = int(torch.multinomial(p, 1, generator=generator))
            device = compiled.tokens.device
            return Acceptance(torch.tensor(path, device=device), next_token)
