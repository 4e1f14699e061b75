"""Plain decoding at batch 1: one target forward per new token through the runtime's
cached forward (`ar` on the dense target; `dllm` / `dllm_robust` on a D-LLM, whose
layers each token's router really skips). Greedy or sampled."""

from __future__ import annotations

import time

import torch

from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import chain_forward, gate_matrix, is_dynamic_model
from spadec.runtime.sampling import DecodeResult, finished, pick_token, sync


@torch.inference_mode()
def autoregressive_decode(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    """Decode `input_ids` [1, n]: greedy at temperature 0, sampled above it (with
    `generator`); timed with device syncs.

    For a D-LLM, `extra` holds the executed-layer share of the generated tokens and, per
    layer, the share of generated tokens that executed it.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("plain decoding runs at batch size 1")
    device = input_ids.device
    cache = LayerSkipCache.empty(len(model.model.layers))
    sync(device)
    start = time.perf_counter()
    logits, _, _ = chain_forward(model, input_ids[0], cache, last_logits=True)
    out: list[int] = []
    step_gates = []
    dynamic = is_dynamic_model(model)
    forwards = 1
    while True:
        out.append(pick_token(logits[-1], temperature, generator))
        if finished(out, max_new_tokens, eos_token_id):
            break
        logits, _, tp = chain_forward(model, torch.tensor([out[-1]], device=device), cache)
        if dynamic:
            step_gates.append(gate_matrix(tp)[0])
        forwards += 1
    sync(device)
    wall = time.perf_counter() - start
    extra = {"kv_cache_entries": sum(cache.layer_lengths())}  # K/V held, over all layers
    if step_gates:
        g = torch.stack(step_gates).float()
        # batch 1: a step's layer load is its one token's executed layers
        share = g.mean().item()
        extra |= {
            "executed_share": share,
            "layer_load_share": share,
            "layer_execution_rate": g.mean(0).tolist(),
        }
    return DecodeResult(out, len(out), wall, forwards, extra)
