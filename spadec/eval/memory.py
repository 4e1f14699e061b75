"""What a method holds in memory and how many weight bytes it reads per generated token.

At batch 1 decoding is bound by reading weights: every target forward reads the layers it
runs, the final norm and the LM head, and every draft pass reads the drafter. Layer
skipping saves exactly those bytes, which is what it buys on a GPU even where, as on this
CPU, a skipped layer's time is small. Per record (`run_side_by_side`):

- `weight_mb_per_token`: (target forwards x (sum over layers of the layer's bytes x the
  share of forwards that ran it, + the LM head and final norm) + the drafter's reads) /
  new tokens, in MB (1e6 bytes). An EAGLE draft step reads the head's layer and fc once per
  head pass and the draft LM head (its `draft_vocab` rows) once per level; Medusa's reads
  all its heads once per step. Embedding rows are a lookup, not counted.
- `resident_weight_mb`: the weights the method needs loaded (target, drafter, predictor;
  tied tensors once).
- `kv_cache_mb`: the target's K/V entries held at the end of the generation (a D-LLM
  stores none for the layers a token skipped), in MB.
"""

from __future__ import annotations

import torch

from spadec.decoding.catalog import method_info, predictor_key
from spadec.decoding.draft import TreeParams

MB = 1e6


def tensor_bytes(*modules: torch.nn.Module | None) -> int:
    """Bytes of the distinct parameters and buffers of `modules` (shared storage once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for t in (*module.parameters(), *module.buffers()):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
    return total


def kv_entry_bytes(target) -> int:
    """Bytes of one token's K and V in one layer."""
    config = target.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * heads * head_dim * target.model.embed_tokens.weight.element_size()


def _target_read_per_forward(target, record: dict) -> float:
    """Weight bytes one target forward reads, given the record's per-layer run rates."""
    layers = [tensor_bytes(layer) for layer in target.model.layers]
    rates = record.get("layer_execution_rate") or [record.get("layer_load_share", 1.0)] * len(
        layers
    )
    fixed = tensor_bytes(target.model.norm) + target.lm_head.weight.numel() * (
        target.lm_head.weight.element_size()
    )
    return fixed + sum(b * r for b, r in zip(layers, rates, strict=True))


def _drafter_bytes(models, method: str) -> tuple[int, int, int]:
    """(resident bytes, bytes read per head pass, bytes read per draft level) of the
    method's drafter."""
    info = method_info(method)
    target = models.resolve(info.target)
    if info.drafter == "eagle":
        head = models.heads[target]
        per_pass = tensor_bytes(head.fc, head.layer)
        lm = models.draft_lm_heads.get(target) or models.target(info.target).lm_head
        return tensor_bytes(head), per_pass, lm.weight.numel() * lm.weight.element_size()
    if info.drafter == "medusa":
        heads = models.medusa[target]
        size = tensor_bytes(heads)
        if not heads.config.own_projection:  # the Medusa-2 format drafts through the target's
            lm = models.target(info.target).lm_head.weight
            size_per_pass = size + heads.num_heads * lm.numel() * lm.element_size()
            return size, size_per_pass, 0
        return size, size, 0
    return 0, 0, 0


def memory_fields(models, method: str, record: dict, params: TreeParams) -> dict:
    """The memory figures of one record of `method` (see the module's docstring)."""
    info = method_info(method)
    target = models.target(info.target)
    resident, per_pass, per_level = _drafter_bytes(models, method)
    key = predictor_key(method)
    predictor = models.predictors.get(key) if key else None
    read = record["target_forwards"] * _target_read_per_forward(target, record)
    read += record.get("draft_forwards", 0) * per_pass
    read += record.get("steps", 0) * (params.depth + 1) * per_level
    out = {
        "weight_mb_per_token": read / max(record["new_tokens"], 1) / MB,
        "resident_weight_mb": (tensor_bytes(target, predictor) + resident) / MB,
    }
    if "kv_cache_entries" in record:
        out["kv_cache_mb"] = record["kv_cache_entries"] * kv_entry_bytes(target) / MB
    return out
