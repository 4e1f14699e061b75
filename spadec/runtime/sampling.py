"""Picking tokens from logits, the stop rule, timing syncs and `DecodeResult`: what every
decoder (plain, speculative, batched) shares."""

from __future__ import annotations

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
    """Wait for the device (CUDA) so that a wall-clock reading covers the work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def target_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The target's sampling distribution at `temperature` (fp32 softmax)."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def pick_token(logits: torch.Tensor, temperature: float, generator=None) -> int:
    """argmax at temperature 0, else a sample from the target's sampling distribution (drawn
    on the CPU, so a seeded CPU generator reproduces it on any device)."""
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(target_probs(logits, temperature).cpu(), 1, generator=generator))


def pick_tokens(logits: torch.Tensor, temperature: float, generator=None) -> torch.Tensor:
    """`pick_token` for each row of logits [B, V] -> [B]."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = target_probs(logits, temperature).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


def finished(out: list[int], max_new_tokens: int, eos: int | None) -> bool:
    """The stop rule of every decoder: `max_new_tokens` reached or EOS generated."""
    return len(out) >= max_new_tokens or (eos is not None and eos in out)


def truncate(out: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    """Generated ids cut after the first EOS and at `max_new_tokens` (a speculative step
    may overshoot both)."""
    if eos is not None and eos in out:
        out = out[: out.index(eos) + 1]
    return out[:max_new_tokens]
