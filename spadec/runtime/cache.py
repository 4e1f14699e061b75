"""A key/value cache with one length per layer, for decoding with real layer skipping.

A token that skips layer l writes nothing at layer l (the eviction rule: its K/V would be
invisible to every later query there anyway), so layers hold different numbers of
entries, and memory shrinks with the skipped share. Keys are stored after RoPE, so an
entry does not need its position again.

Storage: per layer a buffer [B, kv_heads, capacity, head_dim], grown by doubling; new
entries are written in place and committing a tree pass compacts the accepted entries in
place, so a decoding step allocates nothing for the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MIN_CAPACITY = 256  # entries a layer's buffer starts with


@dataclass
class LayerSkipCache:
    buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seen_tokens: int = 0  # positions consumed so far (the next token's position)

    @classmethod
    def empty(cls, num_layers: int) -> LayerSkipCache:
        return cls([None] * num_layers, [0] * num_layers)

    def layer(self, idx: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Layer `idx`'s keys and values [B, kv_heads, length, head_dim] (views)."""
        if self.buffers[idx] is None:
            return None, None
        keys, values = self.buffers[idx]
        n = self.lengths[idx]
        return keys[:, :, :n], values[:, :, :n]

    def _reserve(self, idx: int, k: torch.Tensor, needed: int) -> None:
        old = self.buffers[idx]
        if old is not None and old[0].shape[2] >= needed:
            return
        capacity = max(MIN_CAPACITY, 2 * needed)
        shape = (*k.shape[:2], capacity, k.shape[3])
        keys, values = k.new_empty(shape), k.new_empty(shape)
        if old is not None:
            n = self.lengths[idx]
            keys[:, :, :n] = old[0][:, :, :n]
            values[:, :, :n] = old[1][:, :, :n]
        self.buffers[idx] = (keys, values)

    def append(
        self, idx: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add entries [B, kv_heads, n, head_dim] to layer `idx`; return the layer's full K/V."""
        start = self.lengths[idx]
        end = start + k.shape[2]
        self._reserve(idx, k, end)
        keys, values = self.buffers[idx]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self.lengths[idx] = end
        return keys[:, :, :end], values[:, :, :end]

    def store(self, idx: int):
        """`append` for layer `idx`, as the K/V store of `runtime.attention.decoder_layer`."""
        return lambda k, v: self.append(idx, k, v)

    def layer_lengths(self) -> list[int]:
        return list(self.lengths)

    def keep(self, idx: int, prefix: int, new: torch.Tensor) -> None:
        """Keep layer `idx`'s first `prefix` entries plus the entries prefix + new[j]
        (in that order, new ascending): what a tree pass commits of its accepted path."""
        keys, values = self.buffers[idx]
        src = prefix + new
        m = new.numel()
        # gather first: the destinations overlap the sources (new[j] >= j)
        keys[:, :, prefix : prefix + m] = keys.index_select(2, src)
        values[:, :, prefix : prefix + m] = values.index_select(2, src)
        self.lengths[idx] = prefix + m

    def rewind(self, lengths: list[int], seen_tokens: int) -> None:
        """Forget entries past `lengths` (a snapshot from `layer_lengths`): drafting drops
        its provisional entries, benchmarks time the same pass again over the same prefix."""
        self.lengths = list(lengths)
        self.seen_tokens = seen_tokens
