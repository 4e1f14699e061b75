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
    pair ending in the root. The head cache is left as it was (drafts are provisional).

    Written for few host operations per level (at batch 1 on a CPU a level is a handful of
    small matmuls, so every extra tensor op shows): the levels' rotary tables in one call,
    the provisional K/V appended in place to the head cache's buffer and dropped after, the
    ancestry mask kept as the additive bias itself."""
    device = root_hidden.device
    logp = torch.log_softmax(lm_head(root_hidden).float(), dim=-1)
    k = min(params.top_k, logp.shape[-1])  # a tiny vocabulary caps the branching
    scores, tokens = logp.topk(k)
    tokens = _tokens(lm_head, tokens)
    pool_tokens, pool_scores = [tokens], [scores]
    pool_parents = [torch.full((k,), -1, dtype=torch.long, device=device)]
    if params.depth == 0:
        return select_tree(tokens, scores, pool_parents[0], root_token, params.total_tokens - 1)
    dtype = head.fc.weight.dtype
    # level s drafts at position seen_tokens + s: every level's cos/sin in one call
    levels = torch.arange(cache.seen_tokens, cache.seen_tokens + params.depth, device=device)
    cos_levels, sin_levels = head.rotary_emb(root_hidden[None, None].to(dtype), levels[None])
    # a new level's entries see themselves; [k, k] additive, 0 on the diagonal
    self_only = torch.full((k, k), torch.finfo(dtype).min, dtype=dtype, device=device)
    self_only.fill_diagonal_(0)
    bias = self_only  # frontier x provisional entries (the committed cache is visible to all)
    parent_row = torch.arange(k, device=device).repeat_interleave(k)  # child j -> row j // k
    frontier = torch.arange(k, device=device)  # pool indices
    f_tokens, f_scores = tokens, scores
    f_hidden = root_hidden[None].expand(k, -1)
    committed = cache.layer_lengths()
    offset = k
    try:
        for step in range(params.depth):
            x = head.fuse(f_hidden[None].to(dtype), f_tokens[None])
            cos = cos_levels[:, step : step + 1].expand(1, k, -1)
            sin = sin_levels[:, step : step + 1].expand(1, k, -1)
            # drafts are appended after the committed entries and forgotten below
            h = decoder_layer(head.layer, x, cos, sin, bias, cache.store(0))[0]
            child_logp = torch.log_softmax(lm_head(h).float(), dim=-1)
            c_scores, c_tokens = child_logp.topk(k, dim=-1)  # [k, k]
            c_tokens = _tokens(lm_head, c_tokens).flatten()
            cumulative = (f_scores[:, None] + c_scores).flatten()
            pool_tokens.append(c_tokens)
            pool_scores.append(cumulative)
            pool_parents.append(frontier[parent_row])
            best = cumulative.topk(k).indices
            rows = parent_row[best]
            frontier = offset + best
            offset += k * k
            f_tokens, f_scores, f_hidden = c_tokens[best], cumulative[best], h[rows]
            # a child sees what its parent saw, and itself among the next level's entries
            bias = torch.cat([bias[rows], self_only], dim=1)
    finally:
        cache.rewind(committed, cache.seen_tokens)  # the cache keeps only committed tokens
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
