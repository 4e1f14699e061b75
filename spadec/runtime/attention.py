"""The one attention primitive and decoder-layer body, shared by the D-LLM's
whole-sequence forward, cached decoding and tree verification, batched distillation and
the EAGLE head (a Llama / Qwen2 layer: pre-norm attention, then pre-norm MLP).

Torch only: transformers is not imported here, so that importing the runtime never
triggers the D-LLM model registration halfway through (`spadec._autoregister`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

# (new keys, new values) -> (all keys, all values) the queries attend to: a cache append,
# or None to attend to the new entries only
KVStore = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q, k, cos, sin):
    """Rotary embedding of queries and keys [B, heads, L, head_dim] with cos/sin [B, L,
    head_dim] (the Llama / Qwen2 convention, computed as transformers does)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: each of the K/V heads [B, kv_heads, L, d] serves `groups`
    query heads."""
    if groups == 1:
        return x
    b, heads, length, d = x.shape
    return x[:, :, None].expand(b, heads, groups, length, d).reshape(b, heads * groups, length, d)


def project_qkv(attn, x_norm, cos, sin):
    """Queries, keys and values of an attention module, RoPE applied: [B, heads, L, head_dim]."""
    shape = (*x_norm.shape[:2], -1, attn.head_dim)
    q = attn.q_proj(x_norm).view(shape).transpose(1, 2)
    k = attn.k_proj(x_norm).view(shape).transpose(1, 2)
    v = attn.v_proj(x_norm).view(shape).transpose(1, 2)
    q, k = apply_rope(q, k, cos, sin)
    return q, k, v


def attend(attn, q, keys, values, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, then o_proj (keys' heads repeated for grouped-query
    attention). `bias` is additive (0 or the dtype's minimum) and covers the LAST
    bias.shape[-1] keys; earlier keys (a cached prefix) are visible to every query."""
    scores = torch.matmul(q, repeat_kv(keys, attn.num_key_value_groups).transpose(2, 3))
    scores = scores * attn.scaling
    if bias is not None:
        width = bias.shape[-1]
        if width == scores.shape[-1]:
            scores = scores + bias
        else:
            scores[..., -width:] += bias
    probs = F.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.matmul(probs.to(values.dtype), repeat_kv(values, attn.num_key_value_groups))
    out = out.transpose(1, 2)
    return attn.o_proj(out.reshape(*out.shape[:2], -1))


def decoder_layer(layer, x, cos, sin, bias, store: KVStore | None = None) -> torch.Tensor:
    """One decoder layer on x [B, n, d]: x + attention(norm(x)), then + mlp(norm(.)).
    `store` adds the new K/V to a cache and returns what the queries see."""
    attn = layer.self_attn
    q, k, v = project_qkv(attn, layer.input_layernorm(x), cos, sin)
    if store is not None:
        k, v = store(k, v)
    mid = x + attend(attn, q, k, v, bias)
    return mid + layer.mlp(layer.post_attention_layernorm(mid))


def gated_mix(w: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """A D-LLM layer's output when every token is computed: w * layer(x) + (1 - w) * x,
    with the router decisions w [B, n] (what a real skip computes for w in {0, 1})."""
    wt = w[..., None].to(old.dtype)
    return wt * new + (1 - wt) * old


def blocked_value(dtype) -> float:
    """The additive mask value of a blocked key (the dtype's minimum: exp() underflows to 0)."""
    return torch.finfo(dtype).min


def causal_bias(n: int, dtype, device) -> torch.Tensor:
    """[n, n] additive mask: each of n new tokens sees itself and the ones before it."""
    return torch.full((n, n), blocked_value(dtype), dtype=dtype, device=device).triu(1)


def causal_mask(length: int, dtype, device, attention_mask=None) -> torch.Tensor:
    """[B or 1, 1, L, L] additive mask: causal, and padded keys blocked."""
    blocked = blocked_value(dtype)
    mask = causal_bias(length, dtype, device)[None, None]
    if attention_mask is not None:
        pad = (attention_mask[:, None, None, :] == 0).to(dtype) * blocked
        mask = (mask + pad).clamp(min=blocked)
    return mask
