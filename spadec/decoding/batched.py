"""Batched greedy / sampled generation for self-distillation (throughput, not latency).

A dense model uses `transformers`' `generate` with left padding. A D-LLM model uses the
loop below: a per-layer K/V cache holding every token with a validity mask, so the rows
of a batch can skip different layers (a token that skips layer l is computed densely but
its output is discarded and its K/V marked invalid: the eviction rule). This matches the
D-LLM's own batch-1 decoding; it spends the compute a skip would save, which is fine for
producing training data.
"""

from __future__ import annotations

import torch

from spadec.runtime.attention import blocked_value, decoder_layer, gated_mix
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.sampling import pick_tokens, truncate


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def generate_batch(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (up to and including EOS)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)
    if hasattr(model, "gate"):
        rows = _dllm_generate(
            model, ids, mask, max_new_tokens, eos_token_id, temperature, generator
        )
    else:
        sampling = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling.update(temperature=temperature, top_k=0, top_p=1.0)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **sampling,
        )
        rows = out[:, ids.shape[1] :].tolist()
    return [truncate(r, max_new_tokens, eos_token_id) for r in rows]


def _dllm_generate(model, ids, mask, max_new_tokens, eos, temperature, generator):
    body = model.model
    num_layers = len(body.layers)
    cache = LayerSkipCache.empty(num_layers)  # every token's K/V, valid or not
    valid: list[torch.Tensor | None] = [None] * num_layers  # [B, len] bool per layer
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    real = mask.bool()
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    out = []
    step_ids, step_pos, step_real = ids, positions, real
    for _ in range(max_new_tokens):
        hidden = body.embed_tokens(step_ids)
        cos, sin = body.rotary_emb(hidden, step_pos)
        n = step_ids.shape[1]
        for i, layer in enumerate(body.layers):
            w = model.gate(i, hidden, step_pos)  # [B, n]
            ok = w.bool() & step_real
            valid[i] = ok if valid[i] is None else torch.cat([valid[i], ok], dim=1)
            new = decoder_layer(
                layer, hidden, cos, sin, _batch_bias(valid[i], n, hidden.dtype), cache.store(i)
            )
            hidden = gated_mix(w, new, hidden)
        logits = model.lm_head(body.norm(hidden[:, -1]))
        nxt = pick_tokens(logits, temperature, generator)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        out.append(nxt)
        done |= nxt == eos
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        step_real = torch.ones_like(step_ids, dtype=torch.bool)
    return torch.stack(out, dim=1).tolist()


def _batch_bias(valid: torch.Tensor, n: int, dtype) -> torch.Tensor:
    """[B, 1, n, len] additive mask of n new queries over a layer's entries: invalid keys
    (padding, tokens that skipped the layer) and later new tokens are blocked."""
    blocked = ~valid[:, None, None, :].expand(-1, 1, n, -1).clone()
    new_block = blocked[..., -n:]
    new_block |= torch.ones(n, n, dtype=torch.bool, device=valid.device).triu(1)
    # Every query sees its own key: a padding row with nothing visible would give NaN
    # (an all-minimum row overflows to -inf in the fp32 softmax), and NaN survives the
    # w=0 mix (0 * NaN). Rows this unmasks are discarded anyway.
    new_block &= ~torch.eye(n, dtype=torch.bool, device=valid.device)
    bias = torch.zeros(blocked.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(blocked, blocked_value(dtype))
