"""Cached D-LLM decoding at batch 1 with real layer skipping (method `dllm`)."""

from __future__ import annotations

import time

import torch
from transformers.models.llama.modeling_llama import repeat_kv

from spadec.decoding.autoregressive import DecodeResult, pick_token, sync
from spadec.dllm.cache import LayerSkipCache
from spadec.dllm.modeling import attention_output, project_qkv


def _attend_cached(layer, x_norm, cos, sin, cache: LayerSkipCache, idx: int) -> torch.Tensor:
    """Attention of the executing new tokens over the layer's cache and each other."""
    attn = layer.self_attn
    n = x_norm.shape[1]
    q, k, v = project_qkv(attn, x_norm, cos, sin)
    k_all, v_all = cache.append(idx, k, v)
    scores = torch.matmul(q, repeat_kv(k_all, attn.num_key_value_groups).transpose(2, 3))
    scores = scores * attn.scaling
    if n > 1:  # new tokens see the cache and the new tokens up to themselves
        past = k_all.shape[2] - n
        blocked = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores[..., past:] = scores[..., past:].masked_fill(blocked, torch.finfo(scores.dtype).min)
    return attention_output(attn, scores, v_all)


@torch.inference_mode()
def forward_step(
    model, input_ids: torch.Tensor, cache: LayerSkipCache, force_execute: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run new tokens [1, n] through the model, extending `cache`.

    Returns (logits [1, n, V], gates [n, num_layers]). A layer no new token executes
    costs its router only; otherwise only the executing tokens are computed.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("cached D-LLM decoding runs at batch size 1")
    if model.training:
        raise ValueError("call model.eval() first: training mode samples the routers")
    body = model.model
    n = input_ids.shape[1]
    positions = torch.arange(cache.seen_tokens, cache.seen_tokens + n, device=input_ids.device)[
        None
    ]
    hidden = body.embed_tokens(input_ids)
    cos, sin = body.rotary_emb(hidden, positions)
    gates = []
    for i, layer in enumerate(body.layers):
        w = model.gate(i, hidden, positions, force_execute)[0]
        gates.append(w)
        run = w.nonzero().flatten()
        if run.numel() == 0:
            continue
        every = run.numel() == n
        x = hidden if every else hidden[:, run]
        c, s = (cos, sin) if every else (cos[:, run], sin[:, run])
        mid = x + _attend_cached(layer, layer.input_layernorm(x), c, s, cache, i)
        out = mid + layer.mlp(layer.post_attention_layernorm(mid))
        if every:
            hidden = out
        else:
            hidden = hidden.clone()
            hidden[:, run] = out
    cache.seen_tokens += n
    logits = model.lm_head(body.norm(hidden))
    return logits, torch.stack(gates, dim=-1)


@torch.inference_mode()
def dllm_decode(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    """Greedy (temperature 0) or sampled decoding with real layer skipping.

    `extra` holds the executed-layer share of the generated tokens and, per layer, the
    share of generated tokens that executed it.
    """
    device = input_ids.device
    cache = LayerSkipCache.empty(model.config.num_hidden_layers)
    sync(device)
    start = time.perf_counter()
    logits, _ = forward_step(model, input_ids, cache)
    out: list[int] = []
    step_gates = []
    forwards = 1
    while True:
        next_id = pick_token(logits[0, -1], temperature, generator)
        out.append(next_id)
        if len(out) == max_new_tokens or (eos_token_id is not None and next_id == eos_token_id):
            break
        logits, gates = forward_step(model, torch.tensor([[next_id]], device=device), cache)
        step_gates.append(gates[0])
        forwards += 1
    sync(device)
    wall = time.perf_counter() - start
    extra = {}
    if step_gates:
        g = torch.stack(step_gates).float()
        # batch 1: a step's layer load is its one token's executed layers
        share = g.mean().item()
        extra = {
            "executed_share": share,
            "layer_load_share": share,
            "layer_execution_rate": g.mean(0).tolist(),
        }
    return DecodeResult(out, len(out), wall, forwards, extra)
