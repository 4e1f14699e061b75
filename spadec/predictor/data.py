"""Predictor training data: every verified draft-tree node's layer-K hidden state and
whether it ended on the accepted path.

A speculative decoder (EAGLE-2 with its head, or Medusa with its heads: one predictor per
drafter kind) runs on the D-LLM target over training prompts (never the eval
prompts), greedy, all tokens voting (the plain Eagle2+D-LLM verification). The root of
each tree is left out: it is the target's own token, always "accepted". One shard =
`data.safetensors` (`features` [N, d] float16, `labels` uint8 [N], `depth` int32 [N],
`sample` int32 [N] = prompt index within the shard, `step` int32 [N], `draft` float32
[N, 3] = depth, cumulative and own draft log-prob) + `manifest.json`, written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spadec.decoding.draft import TreeParams
from spadec.decoding.eagle2 import eagle2_decode
from spadec.decoding.spadec import path_labels, recording_verify_step
from spadec.io import atomic_dir, write_json
from spadec.logs import progress
from spadec.predictor.model import draft_features

SHARD_FILE = "data.safetensors"
MANIFEST = "manifest.json"


class PredictorDataError(ValueError):
    """Missing, empty or inconsistent predictor data."""


def collect_nodes(
    target,
    head,
    prompts: list[list[int]],
    params: TreeParams,
    layer_k: int,
    max_new_tokens: int,
    eos_token_id: int | None,
    draft_lm_head: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """`collect_tree_nodes` of EAGLE-2 trees drafted by `head` (through `draft_lm_head`, a
    reduced draft vocabulary, if given)."""

    def decode(input_ids, *args, **kwargs):
        return eagle2_decode(
            target, head, input_ids, params, *args, draft_lm_head=draft_lm_head, **kwargs
        )

    return collect_tree_nodes(decode, target, prompts, layer_k, max_new_tokens, eos_token_id)


def collect_tree_nodes(
    decode: Callable,
    target,
    prompts: list[list[int]],
    layer_k: int,
    max_new_tokens: int,
    eos_token_id: int | None,
) -> dict[str, torch.Tensor]:
    """Every drafted node of every verification step of decoding `prompts` with `decode`
    (a speculative decoder of `target`: `decode(input_ids, max_new_tokens, eos_token_id,
    verify_step=, on_step=)`, e.g. EAGLE-2's or Medusa's): its layer-K hidden state, whether
    it ended on the accepted path, its depth and draft features."""
    device = next(target.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("features", "labels", "depth", "sample", "step", "draft")
    }
    for sample, prompt in enumerate(progress(prompts, desc="predictor_data")):
        hidden: list[torch.Tensor] = []
        steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

        def on_step(compiled, acc, steps=steps):
            extra = draft_features(compiled.depth, compiled.tree.scores, compiled.parents)
            labels = path_labels(compiled.tokens.numel(), acc.path)
            steps.append((compiled.depth, labels, extra))

        decode(
            torch.tensor([prompt], device=device),
            max_new_tokens,
            eos_token_id,
            verify_step=recording_verify_step(layer_k, hidden),
            on_step=on_step,
        )
        for step, (h, (depth, labels, extra)) in enumerate(zip(hidden, steps, strict=True)):
            drafted = depth > 0
            n = int(drafted.sum())
            parts["features"].append(h[drafted].to("cpu", torch.float16))
            parts["labels"].append(labels[drafted].cpu())
            parts["depth"].append(depth[drafted].to("cpu", torch.int32))
            parts["sample"].append(torch.full((n,), sample, dtype=torch.int32))
            parts["step"].append(torch.full((n,), step, dtype=torch.int32))
            parts["draft"].append(extra[drafted].to("cpu", torch.float32))
    if not parts["features"]:
        raise PredictorDataError("no draft-tree nodes were recorded (no prompts?)")
    return {k: torch.cat(v).contiguous() for k, v in parts.items()}


def write_shard(tensors: dict[str, torch.Tensor], out_dir: str | Path, manifest: dict) -> dict:
    labels = tensors["labels"]
    manifest = {
        **manifest,
        "nodes": int(labels.numel()),
        "positives": int(labels.sum()),
        "positive_share": float(labels.float().mean()),
        "hidden_size": int(tensors["features"].shape[1]),
        "steps": int(torch.unique(tensors["sample"] * 1_000_000 + tensors["step"]).numel()),
    }
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, tmp / SHARD_FILE)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def read_shards(shard_dirs: list[str | Path]) -> dict[str, torch.Tensor]:
    """All shards concatenated; `sample` becomes globally unique (shard-major)."""
    out: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for d in shard_dirs:
        d = Path(d)
        if not (d / SHARD_FILE).is_file() or not (d / MANIFEST).is_file():
            raise PredictorDataError(
                f"{d}: not a predictor data shard (needs {MANIFEST}, {SHARD_FILE})"
            )
        manifest = json.loads((d / MANIFEST).read_text())
        t = load_file(d / SHARD_FILE)
        if int(t["labels"].numel()) != manifest["nodes"]:
            raise PredictorDataError(f"{d}: {SHARD_FILE} disagrees with {MANIFEST}")
        t["sample"] = t["sample"] + offset
        offset = int(t["sample"].max()) + 1 if t["sample"].numel() else offset
        for k, v in t.items():
            out.setdefault(k, []).append(v)
    if not out:
        raise PredictorDataError("no predictor data shards given")
    return {k: torch.cat(v) for k, v in out.items()}
