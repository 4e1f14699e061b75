"""Autoregressive decoding with a KV cache, greedy or sampled: the `ar` baseline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class DecodeResult:
    output_ids: list[int]
    new_tokens: int
    wall_s: float
    target_forwards: int
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_token(logits: torch.Tensor, temperature: float, generator=None) -> int:
    """argmax at temperature 0, else a sample from the target's sampling distribution (drawn
    on the CPU, so a seeded CPU generator reproduces it on any device)."""
    from spadec.decoding.accept import target_probs

    if temperature <= 0:
        return int(logits.argmax())
    probs = target_probs(logits, temperature).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def autoregressive_decode(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    """One target forward per new token: greedy at temperature 0, sampled above it (with
    `generator`); timed with device syncs."""
    from transformers import DynamicCache

    from spadec.compat import with_cache

    device = input_ids.device
    cache = DynamicCache(config=model.config)
    sync(device)
    start = time.perf_counter()
    logits = model(input_ids=input_ids, logits_to_keep=1, **with_cache(cache)).logits
    out: list[int] = []
    forwards = 1
    for _ in range(max_new_tokens):
        next_id = pick_token(logits[0, -1], temperature, generator)
        out.append(next_id)
        if eos_token_id is not None and next_id == eos_token_id:
            break
        if len(out) == max_new_tokens:
            break
        step = torch.tensor([[next_id]], device=device)
        logits = model(input_ids=step, **with_cache(cache)).logits
        forwards += 1
    sync(device)
    return DecodeResult(out, len(out), time.perf_counter() - start, forwards)
