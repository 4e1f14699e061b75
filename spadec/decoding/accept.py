"""Which drafted nodes the target accepts, and the token it adds after them.

Greedy: node c (child of p) is correct when its token is the target's argmax at p; the
accepted path is the longest root-to-node chain of correct nodes (siblings carry
different tokens, so it is unique), and the bonus token is the argmax at its end.

Sampling (EAGLE-2's multi-candidate rejection with a deterministic draft): at an
accepted node with target distribution p, try its children in order; accept child x
with probability p(x), else set p(x) = 0 and renormalise; if all are rejected, the bonus
token is drawn from what is left of p. Each step samples exactly from p, so the output
has the target's own sampling distribution.

Typical (Medusa's, LOSSY above temperature 0; `accept_typical`): a node is acceptable
when the target gives its token more than min(threshold, alpha * exp(-H)) at its parent
(H the entropy there); the longest root-to-node chain of acceptable nodes wins. The
output is not distributed as the target's: that is the trade Medusa makes for longer
accepted paths. At temperature 0 it is `accept_greedy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from spadec.decoding.tree import CompiledTree
from spadec.runtime.sampling import target_probs


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


# (compiled tree, logits [T, V], verified [T] bool or None, temperature, generator) ->
# Acceptance: the speculative loop's acceptance rule
AcceptanceRule = Callable[..., Acceptance]


def accept_lossless(
    compiled: CompiledTree,
    logits: torch.Tensor,
    verified: torch.Tensor | None,
    temperature: float,
    generator: torch.Generator | None = None,
) -> Acceptance:
    """The lossless rule: greedy at temperature 0, multi-candidate rejection sampling
    above it (the output is distributed as the target's own)."""
    if temperature <= 0:
        return accept_greedy(compiled, logits, verified)
    return accept_sampling(compiled, logits, temperature, generator, verified)


TYPICAL_BONUS = ("typical", "sample", "greedy")


def typical_floor(probs: torch.Tensor, threshold: float, alpha: float) -> torch.Tensor:
    """[T] per node: the probability a token must exceed there, min(threshold,
    alpha * exp(-H)) with H the entropy of the node's distribution probs [T, V] (exact,
    0 log 0 = 0; Medusa's code adds 1e-5 inside the log, a negligible difference)."""
    entropy = torch.special.entr(probs).sum(dim=-1)
    return torch.clamp(alpha * torch.exp(-entropy), max=threshold)


def accept_typical(
    threshold: float = 0.09, alpha: float = 0.3, bonus: str = "typical"
) -> AcceptanceRule:
    """Medusa's typical acceptance (LOSSY at temperature > 0; exact greedy at 0).

    At T > 0, with p_T the target's softmax at temperature T at a node's parent, a drafted
    node with token x is acceptable when p_T(x) > min(threshold, alpha * exp(-H(p_T))), and
    only if the target verified it. The accepted path is the longest chain of acceptable
    nodes from the root over the whole tree, ties broken by the target's likelihood of the
    path (sum of log p_T), then node order - Medusa's `evaluate_posterior`. Not the first
    acceptable child in child order: acceptability is a fixed property of each node, so
    the longest chain is what the tree has to offer, and a greedy walk could stop early
    under a sibling whose subtree is shorter.

    The token after the path (`bonus`), at its last node's p_T:
      - "typical" (default): sampled from p_T restricted to the tokens the criterion
        accepts there, renormalised (Medusa's `get_typical_one_token`, its sampling mode).
        Never empty: the argmax always passes while alpha < 1 (exp(-H) <= max p).
      - "sample": sampled from the full p_T.
      - "greedy": argmax (Medusa's default `fast` mode and the paper: with fixed head
        drafts the whole output is then deterministic, temperature only moving the
        acceptance floor).
    """
    if bonus not in TYPICAL_BONUS:
        raise ValueError(f"unknown bonus rule {bonus!r} (one of {', '.join(TYPICAL_BONUS)})")
    if threshold < 0 or alpha < 0:
        raise ValueError(f"threshold {threshold} and alpha {alpha} must be >= 0")

    def rule(
        compiled: CompiledTree,
        logits: torch.Tensor,
        verified: torch.Tensor | None,
        temperature: float,
        generator: torch.Generator | None = None,
    ) -> Acceptance:
        if temperature <= 0:
            return accept_greedy(compiled, logits, verified)
        probs = target_probs(logits, temperature)
        floor = typical_floor(probs, threshold, alpha)
        tokens, parents = compiled.tokens, compiled.parents
        p_tok = torch.ones(tokens.shape, dtype=probs.dtype, device=probs.device)
        p_tok[1:] = probs[parents[1:], tokens[1:]]
        ok = torch.ones_like(tokens, dtype=torch.bool)
        ok[1:] = p_tok[1:] > floor[parents[1:]]
        if verified is not None:
            ok &= verified
        paths = compiled.retrieve
        inside = paths >= 0
        good = inside & ok[paths.clamp(min=0)]
        lengths = good.long().cumprod(dim=1).sum(dim=1)  # >= 1: the root
        on_path = torch.arange(paths.shape[1], device=paths.device) < lengths[:, None]
        likelihood = torch.where(on_path, p_tok[paths.clamp(min=0)].log(), 0.0).sum(dim=1)
        best = lengths.max()
        likelihood = torch.where(lengths == best, likelihood, -torch.inf)
        row = int(likelihood.argmax())  # the first of equals
        path = paths[row, : int(best)]
        end = int(path[-1])
        if bonus == "greedy":
            next_token = int(logits[end].argmax())
        else:
            p = probs[end].cpu()
            if bonus == "typical":
                p = torch.where(p > floor[end].cpu(), p, 0.0)
                if float(p.sum()) <= 0.0:  # alpha >= 1 can empty it
                    p = probs[end].cpu()
            next_token = int(torch.multinomial(p, 1, generator=generator))
        return Acceptance(path, next_token)

    return rule
