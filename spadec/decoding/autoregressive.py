"""Greedy autoregressive decoding with a KV cache: the `ar` baseline."""

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


@torch.inference_mode()
def greedy_decode(
    model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None
) -> DecodeResult:
    """Greedy decoding, one target forward per new token; timed with device syncs."""
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
        next_id = int(logits[0, -1].argmax())
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
