"""The one cached target forward at batch 1: new tokens (a prompt, the next token, or a
draft tree) through the layers, extending a LayerSkipCache.

Works for a dense causal LM (every layer runs) and for a D-LLM model (each token's
router decides per layer). For the tokens of one pass, layer l runs if any voting token
wants it; when it runs, exactly the tokens whose router said "execute" are computed and
write K/V (a skipping token's K/V would be invisible at that layer anyway: the eviction
rule), and a token attends to the cached prefix plus the new tokens it may see (for a
tree: itself and its ancestors) that executed the layer. This is what decoding the
accepted path token by token computes, so tree verification is lossless for a D-LLM
target, and plain decoding is the special case of a one-token chain.

A pass is a few named steps, with all state in `TreePass` and the cache:
    start_pass -> run_layers (once, or split at layer K for SpaDec) -> finish_pass
and `commit` then keeps in the cache only the K/V of the accepted path (for a chain:
everything). `chain_forward` is the whole sequence for a chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spadec.runtime.attention import causal_bias, decoder_layer
from spadec.runtime.cache import LayerSkipCache


@dataclass
class TreePass:
    """Activations and bookkeeping of one target pass over `nodes` of a tree."""

    nodes: torch.Tensor  # [n] tree node index of each batch position
    hidden: torch.Tensor  # [1, n, d]
    positions: torch.Tensor  # [1, n]
    bias: torch.Tensor  # [n, n] additive mask among the batch's nodes
    cos: torch.Tensor
    sin: torch.Tensor
    prefix_lengths: list[int]  # per layer: cache entries before this pass
    num_nodes: int  # nodes in the whole tree
    # per layer consulted: (batch nodes, their decisions [n] or None = all executed); nodes
    # outside the batch (pruned) count as executed, a layer never reached as skipped
    gates: list[tuple[torch.Tensor, torch.Tensor | None] | None] = field(default_factory=list)
    executed: list[torch.Tensor | None] = field(default_factory=list)  # per layer: node ids
    layer_ran: list[bool] = field(default_factory=list)
    # per layer: None (no router consulted) or whether the pass's tokens disagreed about it
    split: list[bool | None] = field(default_factory=list)


def is_dynamic_model(model) -> bool:
    """A D-LLM (its routers decide per token whether a layer runs)."""
    return hasattr(model, "gate")


def _gate(model, layer_idx: int, hidden, positions) -> torch.Tensor | None:
    """Per-token decisions [n] (1 executes) or None for a dense model (all execute)."""
    if not is_dynamic_model(model) or not model.is_dynamic(layer_idx):
        return None
    return model.gate(layer_idx, hidden, positions)[0]


def start_pass(
    model, tokens: torch.Tensor, depth: torch.Tensor, bias: torch.Tensor, cache: LayerSkipCache
) -> TreePass:
    """Embed `tokens` [n] at positions cache.seen_tokens + depth, with mask `bias` [n, n]."""
    if is_dynamic_model(model) and model.training:
        raise ValueError("call model.eval() first: training mode samples the routers")
    body = model.model
    positions = (cache.seen_tokens + depth)[None]
    hidden = body.embed_tokens(tokens[None])
    cos, sin = body.rotary_emb(hidden, positions)
    n = tokens.shape[0]
    num_layers = len(body.layers)
    return TreePass(
        nodes=torch.arange(n, device=tokens.device),
        hidden=hidden,
        positions=positions,
        bias=bias.to(hidden.dtype),
        cos=cos,
        sin=sin,
        prefix_lengths=cache.layer_lengths(),
        num_nodes=n,
        gates=[None] * num_layers,
        executed=[None] * num_layers,
        layer_ran=[False] * num_layers,
        split=[None] * num_layers,
    )


def start_chain(model, tokens: torch.Tensor, cache: LayerSkipCache) -> TreePass:
    """A plain causal pass: a chain is a tree where each token is the next's parent."""
    n = tokens.shape[0]
    bias = causal_bias(n, model.model.embed_tokens.weight.dtype, tokens.device)
    return start_pass(model, tokens, torch.arange(n, device=tokens.device), bias, cache)


def run_layers(
    model,
    tp: TreePass,
    cache: LayerSkipCache,
    start: int,
    stop: int,
    voters: torch.Tensor | None = None,
) -> TreePass:
    """Run layers [start, stop) on the pass's tokens, in place.

    voters: bool [n] over the batch, the tokens whose routers decide whether a layer runs
    at all (None: every token; upstream SpaDec's "steer" mode passes the selected path).
    When a layer runs, every token whose router says execute is computed.
    """
    body = model.model
    n = tp.hidden.shape[1]
    for i in range(start, stop):
        w = _gate(model, i, tp.hidden, tp.positions)
        run = None  # every token
        if w is not None:
            # the one host sync of a layer: on the CPU it costs nothing, and it lets a
            # skipped layer cost its router only
            run = w.nonzero().flatten()
            tp.split[i] = 0 < run.numel() < n
            silent = run.numel() == 0 or (voters is not None and not bool(voters[run].any()))
            if silent:
                tp.gates[i] = (tp.nodes, torch.zeros_like(w))
                continue
            if run.numel() == n:
                run = None
        tp.layer_ran[i] = True
        tp.gates[i] = (tp.nodes, w)
        if run is None:
            x, cos, sin, bias = tp.hidden, tp.cos, tp.sin, tp.bias
            tp.executed[i] = tp.nodes
        else:
            x, cos, sin = tp.hidden[:, run], tp.cos[:, run], tp.sin[:, run]
            bias = tp.bias[run][:, run]
            tp.executed[i] = tp.nodes[run]
        out = decoder_layer(body.layers[i], x, cos, sin, bias, cache.store(i))
        if run is None:
            tp.hidden = out
        else:
            tp.hidden = tp.hidden.clone()
            tp.hidden[:, run] = out
    return tp


def keep_nodes(tp: TreePass, keep: torch.Tensor) -> TreePass:
    """Drop batch positions where `keep` [n] is False (their K/V already written stays
    in the cache until `commit`, which keeps only the accepted path)."""
    idx = keep.nonzero().flatten()
    tp.nodes = tp.nodes[idx]
    tp.hidden = tp.hidden[:, idx]
    tp.positions = tp.positions[:, idx]
    tp.cos, tp.sin = tp.cos[:, idx], tp.sin[:, idx]
    tp.bias = tp.bias[idx][:, idx]
    return tp


def finish_pass(
    model, tp: TreePass, last_logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, V], final-norm features [n, d]) for the batch's nodes; with
    `last_logits`, the logits of the last node only ([1, V]: a prompt needs no more, and
    the LM head is a large part of a small model's forward)."""
    features = model.model.norm(tp.hidden)[0]
    return model.lm_head(features[-1:] if last_logits else features), features


def gate_matrix(tp: TreePass) -> torch.Tensor:
    """[num_nodes, num_layers] decisions (1 = executed); layers not reached count as skipped."""
    out = torch.zeros(tp.num_nodes, len(tp.gates), device=tp.hidden.device)
    for i, gate in enumerate(tp.gates):
        if gate is None:
            continue
        out[:, i] = 1.0
        nodes, w = gate
        if w is not None:
            out[nodes, i] = w
    return out


def commit(cache: LayerSkipCache, tp: TreePass, path: torch.Tensor) -> None:
    """Keep, per layer, the prefix plus the K/V of the accepted `path` nodes (in path
    order); advance the cache by len(path) positions."""
    in_path = torch.zeros(tp.num_nodes, dtype=torch.bool, device=path.device)
    in_path[path] = True
    for i, nodes in enumerate(tp.executed):
        if nodes is None:
            continue
        mine = in_path[nodes]
        if bool(mine.all()):
            continue  # everything written is on the path (e.g. a chain)
        cache.keep(i, tp.prefix_lengths[i], mine.nonzero().flatten())
    cache.seen_tokens += int(path.numel())


def chain_forward(
    model, tokens: torch.Tensor, cache: LayerSkipCache, last_logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor, TreePass]:
    """New tokens [n] through every layer, appended to `cache`: (logits [n, V] (or [1, V],
    see `finish_pass`), final-norm features [n, d], the pass, whose `gate_matrix` gives
    each token's decisions)."""
    tp = run_layers(model, start_chain(model, tokens, cache), cache, 0, len(model.model.layers))
    logits, features = finish_pass(model, tp, last_logits)
    cache.seen_tokens += tokens.numel()  # a chain commits all it wrote (`commit` of every node)
    return logits, features, tp
