"""Memory figures of a record: weight bytes read per token, resident weights, K/V held."""

from __future__ import annotations

import pytest
import torch

from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.draft import DraftLMHead, TreeParams
from spadec.decoding.eagle2 import eagle2_decode
from spadec.eagle.head import new_head
from spadec.eval.memory import MB, kv_entry_bytes, memory_fields, tensor_bytes
from spadec.eval.methods import Models
from tests.unit.test_dllm_model import make as make_dllm
from tests.unit.test_eagle_decode import SHAPE, dense, prompt

PARAMS = TreeParams(8, 3, 3)


def _per_forward(model) -> int:
    layers = sum(tensor_bytes(layer) for layer in model.model.layers)
    return layers + tensor_bytes(model.model.norm) + model.lm_head.weight.nbytes


def test_tied_and_shared_tensors_count_once():
    model = dense()
    model.lm_head.weight = model.model.embed_tokens.weight
    emb = model.model.embed_tokens.weight.nbytes
    assert tensor_bytes(model) == sum(p.nbytes for p in model.parameters()) + sum(
        b.nbytes for b in model.buffers()
    )
    assert tensor_bytes(model.model.embed_tokens, model.lm_head) == emb
    assert tensor_bytes(None) == 0


def test_plain_decoding_reads_every_layer_per_forward_and_holds_its_tokens():
    model = dense()
    ids = prompt()
    res = autoregressive_decode(model, ids, 12)
    record = {"target_forwards": res.target_forwards, "new_tokens": res.new_tokens, **res.extra}
    # K/V of the prompt and of every generated token but the last (never fed back)
    layers = SHAPE["num_hidden_layers"]
    assert res.extra["kv_cache_entries"] == layers * (ids.shape[1] + 12 - 1)
    got = memory_fields(Models(targets={"dense": model}), "ar", record, PARAMS)
    expected = res.target_forwards * _per_forward(model) / 12 / MB
    assert got["weight_mb_per_token"] == pytest.approx(expected)
    assert got["resident_weight_mb"] == pytest.approx(tensor_bytes(model) / MB)
    assert got["kv_cache_mb"] == pytest.approx(
        res.extra["kv_cache_entries"] * kv_entry_bytes(model) / MB
    )
    # K and V, 2 KV heads of 12 dims, float64
    assert kv_entry_bytes(model) == 2 * 2 * 12 * 8


def test_skipped_layers_are_neither_read_nor_cached():
    model = make_dllm("llama-gqa")
    ids = prompt(vocab=model.config.vocab_size)
    res = autoregressive_decode(model, ids, 12)
    rates = res.extra["layer_execution_rate"]
    assert min(rates) < 1  # the test model's routers skip something
    record = {"target_forwards": res.target_forwards, "new_tokens": res.new_tokens, **res.extra}
    models = Models(targets={"dllm": model, "dllm_baseline": model})
    got = memory_fields(models, "dllm", record, PARAMS)
    full = res.target_forwards * _per_forward(model) / 12 / MB
    assert got["weight_mb_per_token"] < full
    layers = len(model.model.layers)
    assert res.extra["kv_cache_entries"] < layers * (ids.shape[1] + 12 - 1)
    # with every rate at 1 the read is the full model's
    record["layer_execution_rate"] = [1.0] * layers
    assert memory_fields(models, "dllm", record, PARAMS)["weight_mb_per_token"] == pytest.approx(
        full
    )


def test_a_reduced_draft_vocabulary_reads_fewer_draft_bytes():
    model = dense()
    head = new_head(model).double().eval()
    ids = prompt()
    res = eagle2_decode(model, head, ids, PARAMS, 16)
    record = {"target_forwards": res.target_forwards, "new_tokens": res.new_tokens, **res.extra}
    models = Models(targets={"dense": model}, heads={"dense": head})
    full = memory_fields(models, "eagle2", record, PARAMS)
    plain = memory_fields(models, "ar", record, PARAMS)
    assert full["weight_mb_per_token"] > plain["weight_mb_per_token"]  # the drafter reads too
    models.draft_lm_heads["dense"] = DraftLMHead(model.lm_head, torch.arange(8))
    reduced = memory_fields(models, "eagle2", record, PARAMS)
    saved = record["steps"] * (PARAMS.depth + 1) * (SHAPE["vocab_size"] - 8) * SHAPE["hidden_size"]
    assert (full["weight_mb_per_token"] - reduced["weight_mb_per_token"]) * MB == pytest.approx(
        saved * 8 / record["new_tokens"]
    )
    assert full["resident_weight_mb"] > plain["resident_weight_mb"]  # the head is loaded
