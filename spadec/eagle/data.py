"""EAGLE training data: token ids, the target's final-norm features and a loss mask.

One shard = one directory holding `data.safetensors` (all samples concatenated:
`input_ids` int32 [N], `features` [N, d] (float16 by default), `loss_mask` uint8 [N],
`offsets` int64 [S + 1]) and `manifest.json` (counts, hidden size, dtype, target). The
shard is written to a temporary name and renamed, so a killed job leaves no shard and a
rerun redoes it whole.

Training pairs feature f_t with token x_{t+1} and regresses f_{t+1}; position t counts
in the loss when x_{t+1} is part of the answer (the prompt is context only).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spadec.io import atomic_dir, read_jsonl, write_json
from spadec.logs import progress
from spadec.runtime.load import DTYPES

log = logging.getLogger(__name__)

SHARD_FILE = "data.safetensors"
MANIFEST = "manifest.json"


class EagleDataError(ValueError):
    """A shard or distilled-data file that is missing, empty or inconsistent."""


def shard_records(records: list[dict], shard: int, shards: int) -> list[dict]:
    """The records of shard `shard` of `shards` (contiguous, sizes differ by at most 1)."""
    if not 0 <= shard < shards:
        raise EagleDataError(f"shard {shard} out of range 0..{shards - 1}")
    per, rest = divmod(len(records), shards)
    start = shard * per + min(shard, rest)
    return records[start : start + per + (1 if shard < rest else 0)]


def target_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-norm features [B, L, d] of a dense or D-LLM target (eval mode, no grad)."""
    with torch.inference_mode():
        if hasattr(model, "gate"):  # D-LLM: its own forward, routers deciding
            return model(input_ids=input_ids, attention_mask=attention_mask).features
        return model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def write_shard(
    model,
    records: list[dict],
    out_dir: str | Path,
    *,
    shard: int,
    shards: int,
    target: str,
    batch_size: int = 8,
    max_len: int = 2048,
    feature_dtype: str = "float16",
) -> dict:
    """Compute features for distilled `records` ({prompt_ids, response_ids}) and write a shard."""
    if not records:
        raise EagleDataError(f"shard {shard}/{shards} has no samples (too few distilled records)")
    device = next(model.parameters()).device
    dtype = DTYPES[feature_dtype]
    ids_parts, feat_parts, mask_parts, lengths = [], [], [], []
    truncated = 0
    order = sorted(range(len(records)), key=lambda i: -_length(records[i]))  # less padding
    by_index: dict[int, tuple] = {}
    for first in progress(range(0, len(order), batch_size), desc=f"eagle_data shard {shard}"):
        chunk = [records[i] for i in order[first : first + batch_size]]
        seqs, masks = [], []
        for rec in chunk:
            ids = list(rec["prompt_ids"]) + list(rec["response_ids"])
            mask = [0] * len(rec["prompt_ids"]) + [1] * len(rec["response_ids"])
            if len(ids) > max_len:
                truncated += 1
                ids, mask = ids[:max_len], mask[:max_len]
            seqs.append(ids)
            masks.append(mask)
        width = max(len(s) for s in seqs)
        batch = torch.zeros(len(seqs), width, dtype=torch.long)
        attn = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            batch[row, : len(s)] = torch.tensor(s)
            attn[row, : len(s)] = 1
        feats = target_features(model, batch.to(device), attn.to(device)).to("cpu", dtype)
        for row, (s, m) in enumerate(zip(seqs, masks, strict=True)):
            by_index[order[first + row]] = (s, feats[row, : len(s)], m)
    for i in range(len(records)):  # back to record order: shards are reproducible
        s, f, m = by_index[i]
        ids_parts.append(torch.tensor(s, dtype=torch.int32))
        feat_parts.append(f)
        mask_parts.append(torch.tensor(m, dtype=torch.uint8))
        lengths.append(len(s))
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    tensors = {
        "input_ids": torch.cat(ids_parts),
        "features": torch.cat(feat_parts).contiguous(),
        "loss_mask": torch.cat(mask_parts),
        "offsets": offsets,
    }
    manifest = {
        "target": target,
        "shard": shard,
        "shards": shards,
        "samples": len(lengths),
        "tokens": int(offsets[-1]),
        "answer_tokens": int(tensors["loss_mask"].sum()),
        "hidden_size": int(tensors["features"].shape[1]),
        "feature_dtype": feature_dtype,
        "truncated_samples": truncated,
        "max_len": max_len,
        "ids": [r.get("id") for r in records],
    }
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, tmp / SHARD_FILE)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _length(rec: dict) -> int:
    return len(rec["prompt_ids"]) + len(rec["response_ids"])


def read_distilled(path: str | Path) -> list[dict]:
    records = read_jsonl(path)
    bad = [i for i, r in enumerate(records) if "prompt_ids" not in r or "response_ids" not in r]
    if bad:
        raise EagleDataError(f"{path}: record {bad[0]} lacks prompt_ids/response_ids")
    if not records:
        raise EagleDataError(f"{path}: no distilled records")
    return records


@dataclass
class Sample:
    input_ids: torch.Tensor  # [L] int64
    features: torch.Tensor  # [L, d]
    loss_mask: torch.Tensor  # [L] int64


class ShardReader:
    """Random access to the samples of one or more shards (tensors read lazily)."""

    def __init__(self, shard_dirs: list[str | Path]):
        self._files = []
        self._index: list[tuple[int, int, int]] = []  # (file, start, end)
        hidden = None
        for d in shard_dirs:
            d = Path(d)
            manifest_path, data_path = d / MANIFEST, d / SHARD_FILE
            if not manifest_path.is_file() or not data_path.is_file():
                raise EagleDataError(
                    f"{d}: not an EAGLE data shard (needs {MANIFEST}, {SHARD_FILE})"
                )
            manifest = json.loads(manifest_path.read_text())
            if hidden is not None and manifest["hidden_size"] != hidden:
                raise EagleDataError(f"{d}: hidden size {manifest['hidden_size']} != {hidden}")
            hidden = manifest["hidden_size"]
            handle = safe_open(str(data_path), framework="pt")
            offsets = handle.get_tensor("offsets").tolist()
            if len(offsets) != manifest["samples"] + 1:
                raise EagleDataError(f"{data_path}: offsets disagree with {MANIFEST}")
            fi = len(self._files)
            self._files.append(handle)
            self._index += [(fi, a, b) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        if not self._index:
            raise EagleDataError("no EAGLE training samples in " + ", ".join(map(str, shard_dirs)))
        self.hidden_size = hidden

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Sample:
        fi, a, b = self._index[i]
        handle = self._files[fi]
        return Sample(
            handle.get_slice("input_ids")[a:b].long(),
            handle.get_slice("features")[a:b],
            handle.get_slice("loss_mask")[a:b].long(),
        )


def training_pair(sample: Sample, max_len: int) -> dict[str, torch.Tensor]:
    """Shift one sample into (features f_t, next token x_{t+1}) -> target f_{t+1}."""
    f = sample.features[:max_len].float()
    ids = sample.input_ids[:max_len]
    mask = sample.loss_mask[:max_len]
    length = f.shape[0]
    next_ids = torch.zeros(length, dtype=torch.long)
    next_ids[:-1] = ids[1:]
    target = torch.zeros_like(f)
    target[:-1] = f[1:]
    loss_mask = torch.zeros(length, dtype=torch.float32)
    loss_mask[:-1] = mask[1:].float()
    return {"features": f, "input_ids": next_ids, "target": target, "loss_mask": loss_mask}


def collate_pairs(pairs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of training pairs; `attention_mask` marks the real positions."""
    width = max(p["input_ids"].shape[0] for p in pairs)
    d = pairs[0]["features"].shape[1]
    out = {
        "features": torch.zeros(len(pairs), width, d),
        "target": torch.zeros(len(pairs), width, d),
        "input_ids": torch.zeros(len(pairs), width, dtype=torch.long),
        "loss_mask": torch.zeros(len(pairs), width),
        "attention_mask": torch.zeros(len(pairs), width, dtype=torch.long),
    }
    for row, p in enumerate(pairs):
        n = p["input_ids"].shape[0]
        for key in ("features", "target", "input_ids", "loss_mask"):
            out[key][row, :n] = p[key]
        out["attention_mask"][row, :n] = 1
    return out
