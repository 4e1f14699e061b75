"""Target forward over a batch of new tokens at batch 1: a prompt, or a draft tree.

Works for a dense causal LM (every layer runs) and for a D-LLM model (each token's
router decides per layer). For the tokens of one pass, layer l runs if any voting token
wants it; when it runs, exactly the tokens whose router said "execute" are computed and
write K/V (a skipping token's K/V would be invisible at that layer anyway: the eviction
rule), and a token attends to the cached prefix plus the tree nodes it may see (itself
and its ancestors) that executed the layer. This is what decoding the accepted path
token by token would compute, so verification is lossless for a D-LLM target.

A pass is a few named steps, with all state in `TreePass` and the cache:
    start_pass -> run_layers (once, or split at layer K for SpaDec) -> finish_pass
and, after acceptance, `commit` keeps in the cache only the K/V of the accepted path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.models.llama.modeling_llama import repeat_kv

from spadec.decoding.tree import CompiledTree
from spadec.dllm.cache import LayerSkipCache
from spadec.dllm.modeling import attention_output, project_qkv


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
    gates: list[torch.Tensor | None] = field(default_factory=list)  # per layer: [num_nodes]
    executed: list[torch.Tensor | None] = field(default_factory=list)  # per layer: node ids
    layer_ran: list[bool] = field(default_factory=list)
    # per layer: None (no router consulted) or whether the pass's tokens disagreed about it
    split: list[bool | None] = field(default_factory=list)


def is_dynamic_model(model) -> bool:
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


def start_tree(model, compiled: CompiledTree, cache: LayerSkipCache) -> TreePass:
    return start_pass(model, compiled.tokens, compiled.depth, compiled.attn_bias, cache)


def start_chain(model, tokens: torch.Tensor, cache: LayerSkipCache) -> TreePass:
    """A plain causal pass (the prompt): a chain is a tree where each token is the next's parent."""
    n = tokens.shape[0]
    dtype = model.model.embed_tokens.weight.dtype
    bias = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=tokens.device).triu(1)
    return start_pass(model, tokens, torch.arange(n, device=tokens.device), bias, cache)


def _attend(layer, x_norm, cos, sin, cache: LayerSkipCache, idx: int, bias) -> torch.Tensor:
    attn = layer.self_attn
    q, k, v = project_qkv(attn, x_norm, cos, sin)
    k_all, v_all = cache.append(idx, k, v)
    scores = torch.matmul(q, repeat_kv(k_all, attn.num_key_value_groups).transpose(2, 3))
    scores = scores * attn.scaling
    n = q.shape[2]
    scores[..., -n:] += bias  # prefix entries are all visible; new ones by the tree mask
    return attention_output(attn, scores, v_all)


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
        layer = body.layers[i]
        w = _gate(model, i, tp.hidden, tp.positions)
        full = torch.ones(tp.num_nodes, device=tp.hidden.device)
        if w is None:
            run = None  # every token
        else:
            run = w.nonzero().flatten()  # the one host sync of this layer
            tp.split[i] = 0 < run.numel() < n
            silent = run.numel() == 0 or (voters is not None and not bool(voters[run].any()))
            if silent:
                tp.gates[i] = full.index_put((tp.nodes,), torch.zeros_like(w))
                continue
            if run.numel() == n:
                run = None
        tp.layer_ran[i] = True
        if run is None:
            x, cos, sin, bias = tp.hidden, tp.cos, tp.sin, tp.bias
            tp.executed[i] = tp.nodes
        else:
            x, cos, sin = tp.hidden[:, run], tp.cos[:, run], tp.sin[:, run]
            bias = tp.bias[run][:, run]
            tp.executed[i] = tp.nodes[run]
        mid = x + _attend(layer, layer.input_layernorm(x), cos, sin, cache, i, bias)
        out = mid + layer.mlp(layer.post_attention_layernorm(mid))
        if run is None:
            tp.hidden = out
        else:
            tp.hidden = tp.hidden.clone()
            tp.hidden[:, run] = out
        tp.gates[i] = full if w is None else full.index_put((tp.nodes,), w)
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


def finish_pass(model, tp: TreePass) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, V], final-norm features [n, d]) for the batch's nodes."""
    features = model.model.norm(tp.hidden)[0]
    return model.lm_head(features), features


def gate_matrix(tp: TreePass) -> torch.Tensor:
    """[num_nodes, num_layers] decisions (1 = executed); layers not run count as skipped."""
    cols = [
        g if g is not None else torch.zeros(tp.num_nodes, device=tp.hidden.device) for g in tp.gates
    ]
    return torch.stack(cols, dim=-1)


def commit(cache: LayerSkipCache, tp: TreePass, path: torch.Tensor) -> None:
    """Keep, per layer, the prefix plus the K/V of the accepted `path` nodes (in path
    order); advance the cache by len(path) positions."""
    in_path = torch.zeros(tp.num_nodes, dtype=torch.bool, device=path.device)
    in_path[path] = True
    for i, nodes in enumerate(tp.executed):
        if nodes is None:
            continue
        prefix = tp.prefix_lengths[i]
        mine = in_path[nodes]
        if bool(mine.all()):
            continue  # everything written is on the path (e.g. a chain)
        keep = torch.cat(
            [
                torch.arange(prefix, device=path.device),
                prefix + mine.nonzero().flatten(),
            ]
        )
        cache.keys[i] = cache.keys[i].index_select(2, keep)
        cache.values[i] = cache.values[i].index_select(2, keep)
    cache.seen_tokens += int(path.numel())
