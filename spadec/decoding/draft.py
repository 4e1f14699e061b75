"""EAGLE-2 drafting: grow a tree with the draft head, keep the most probable nodes.

Level 1 takes the head's top-k tokens after the root. Each of `depth` expansion steps
feeds the current frontier (k nodes) through the head as one batch, scores every child
as parent score + log p(child) (a cumulative log-probability), and keeps the global
top-k of the k*k children as the next frontier. All `k + depth*k*k` candidates are then
re-ranked globally and the best `total_tokens - 1` become the tree (with the root,
`total_tokens` nodes). A child's score never exceeds its parent's, so a stable sort by
score keeps every chosen node's parent chosen too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spadec.decoding.defaults import DEFAULT_DEPTH, DEFAULT_TOP_K, DEFAULT_TOTAL_TOKENS
from spadec.decoding.tree import DraftTree
from spadec.runtime.attention import causal_bias, decoder_layer
from spadec.runtime.cache import LayerSkipCache


@dataclass(frozen=True)
class TreeParams:
    total_tokens: int = DEFAULT_TOTAL_TOKENS  # tree nodes verified per step, root included
    depth: int = DEFAULT_DEPTH  # expansion steps after level 1 (deepest draft token: depth + 1)
    top_k: int = DEFAULT_TOP_K

    def __post_init__(self):
        if self.total_tokens < 2 or self.depth < 0 or self.top_k < 1:
            raise ValueError(f"invalid tree parameters {self}")

    @classmethod
    def from_settings(cls, settings: dict) -> TreeParams:
        return cls(settings["total_tokens"], settings["depth"], settings["top_k"])


class DraftLMHead(torch.nn.Module):
    """The target's LM head restricted to `token_ids` (a reduced draft vocabulary): logits
    over those tokens only; `token_ids` maps a logit's index back to its token."""

    def __init__(self, lm_head: torch.nn.Module, token_ids: torch.Tensor):
        super().__init__()
        ids = token_ids.to(lm_head.weight.device)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("weight", lm_head.weight.detach()[ids].clone(), persistent=False)
        bias = getattr(lm_head, "bias", None)
        self.register_buffer(
            "bias", None if bias is None else bias.detach()[ids].clone(), persistent=False
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight, self.bias)


def _tokens(lm_head: torch.nn.Module, index: torch.Tensor) -> torch.Tensor:
    """Token ids of logit indices (a reduced draft vocabulary maps them; the full LM head's
    indices are the ids)."""
    ids = getattr(lm_head, "token_ids", None)
    return index if ids is None else ids[index]


def head_extend(
    head, cache: LayerSkipCache, features: torch.Tensor, next_tokens: torch.Tensor
) -> torch.Tensor:
    """Run accepted (feature f_t, token x_{t+1}) pairs [n, d], [n] through the head,
    appending to its cache; returns the head's outputs [n, d]."""
    n = next_tokens.shape[0]
    x = head.fuse(features[None].to(head.fc.weight.dtype), next_tokens[None])
    positions = torch.arange(cache.seen_tokens, cache.seen_tokens + n, device=x.device)[None]
    cos, sin = head.rotary_emb(x, positions)
    bias = causal_bias(n, x.dtype, x.device)  # the cached prefix is visible to all
    out = decoder_layer(head.layer, x, cos, sin, bias, cache.store(0))
    cache.seen_tokens += n
    return out[0]


@torch.inference_mode()
def draft_tree(
    head,
    lm_head: torch.nn.Module,
    cache: LayerSkipCache,
    root_hidden: torch.Tensor,
    root_token: int,
    params: TreeParams,
) -> DraftTree:
    """Draft a tree below `root_token`; `root_hidden` [d] is the head's output for the
    pair ending in the root. The head cache is left as it was (drafts are provisional)."""
    device = root_hidden.device
    logp = torch.log_softmax(lm_head(root_hidden).float(), dim=-1)
    k = min(params.top_k, logp.shape[-1])  # a tiny vocabulary caps the branching
    scores, tokens = logp.topk(k)
    tokens = _tokens(lm_head, tokens)
    pool_tokens, pool_scores = [tokens], [scores]
    pool_parents = [torch.full((k,), -1, dtype=torch.long, device=device)]
    frontier = torch.arange(k, device=device)  # pool indices
    f_tokens, f_scores = tokens, scores
    f_hidden = root_hidden[None].expand(k, -1)
    seen = torch.zeros(k, 0, dtype=torch.bool, device=device)  # frontier x provisional entries
    keys, values = cache.layer(0)
    dtype = head.fc.weight.dtype
    blocked = torch.finfo(dtype).min
    offset = k
    for step in range(params.depth):
        x = head.fuse(f_hidden[None].to(dtype), f_tokens[None])
        positions = torch.full((1, k), cache.seen_tokens + step, device=device)
        cos, sin = head.rotary_emb(x, positions)
        visible = torch.cat([seen, torch.eye(k, dtype=torch.bool, device=device)], dim=1)
        # the committed head cache is visible to all; drafted entries by ancestry
        bias = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(
            ~visible, blocked
        )

        def provisional(kk, vv):
            # drafts extend a local copy: the head cache keeps only committed tokens
            nonlocal keys, values
            keys = kk if keys is None else torch.cat([keys, kk], dim=2)
            values = vv if values is None else torch.cat([values, vv], dim=2)
            return keys, values

        h = decoder_layer(head.layer, x, cos, sin, bias, provisional)[0]
        child_logp = torch.log_softmax(lm_head(h).float(), dim=-1)
        c_scores, c_tokens = child_logp.topk(k, dim=-1)  # [k, k]
        c_tokens = _tokens(lm_head, c_tokens)
        cumulative = (f_scores[:, None] + c_scores).flatten()
        pool_tokens.append(c_tokens.flatten())
        pool_scores.append(cumulative)
        pool_parents.append(frontier.repeat_interleave(k))
        best = cumulative.topk(k).indices
        rows = best // k
        frontier = offset + best
        offset += k * k
        f_tokens, f_scores, f_hidden = c_tokens.flatten()[best], cumulative[best], h[rows]
        seen = torch.cat([seen[rows], torch.eye(k, dtype=torch.bool, device=device)[rows]], dim=1)
    return select_tree(
        torch.cat(pool_tokens),
        torch.cat(pool_scores),
        torch.cat(pool_parents),
        root_token,
        params.total_tokens - 1,
    )


def select_tree(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    parents: torch.Tensor,
    root_token: int,
    keep: int,
) -> DraftTree:
    """The `keep` best candidates (pool order kept) under a root; parents are pool indices
    (-1 = root) and come before their children in the pool."""
    order = torch.sort(-scores, stable=True).indices[:keep]
    chosen = order.sort().values
    node_of = torch.full((tokens.numel() + 1,), -1, dtype=torch.long, device=tokens.device)
    node_of[chosen] = torch.arange(1, chosen.numel() + 1, device=tokens.device)
    node_of[-1] = 0  # a pool parent of -1 (the root) indexes this last slot -> node 0
    tree_parents = node_of[parents[chosen]]
    if bool((tree_parents < 0).any()):
        raise RuntimeError("a drafted node was kept without its parent")
    root = torch.tensor([root_token], dtype=torch.long, device=tokens.device)
    minus_one = torch.tensor([-1], dtype=torch.long, device=tokens.device)
    zero = torch.zeros(1, dtype=scores.dtype, device=tokens.device)
    return DraftTree(
        torch.cat([root, tokens[chosen]]),
        torch.cat([minus_one, tree_parents]),
        torch.cat([zero, scores[chosen]]),
    )
