"""A key/value cache with one length per layer, for decoding with real layer skipping.

A token that skips layer l writes nothing at layer l (the eviction rule: its K/V would be
invisible to every later query there anyway), so layers hold different numbers of
entries, and memory shrinks with the skipped share. Keys are stored after RoPE, so an
entry does not need its position again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerSkipCache:
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    seen_tokens: int = 0  # positions consumed so far (the next token's position)

    @classmethod
    def empty(cls, num_layers: int) -> LayerSkipCache:
        return cls([None] * num_layers, [None] * num_layers)

    def layer(self, idx: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys[idx], self.values[idx]

    def append(
        self, idx: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add entries [B, kv_heads, n, head_dim] to layer `idx`; return the layer's full K/V."""
        if self.keys[idx] is not None:
            k = torch.cat([self.keys[idx], k], dim=2)
            v = torch.cat([self.values[idx], v], dim=2)
        self.keys[idx], self.values[idx] = k, v
        return k, v

    def layer_lengths(self) -> list[int]:
        return [0 if k is None else k.shape[2] for k in self.keys]
