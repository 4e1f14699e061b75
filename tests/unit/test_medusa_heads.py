"""Medusa heads: shapes, the zero-initialised start, the save/load round trip and the
one-line errors on bad heads directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from spadec.artefacts import ArtefactError
from spadec.medusa.heads import (
    MedusaConfig,
    MedusaError,
    MedusaHeads,
    check_heads_fit,
    init_heads,
    load_heads,
    new_heads,
    save_heads,
)
from tests.conftest import tiny_llama

D, V = 16, 40


def _target(hidden: int = D, vocab: int = V) -> LlamaForCausalLM:
    return tiny_llama(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )


def _trained_like(heads: MedusaHeads, seed: int = 1) -> MedusaHeads:
    """Every tensor set to something non-trivial (a fresh head's blocks are zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return heads


def _one_line(err: BaseException, path) -> None:
    text = str(err)
    assert "\n" not in text, text
    assert str(path) in text, text


@pytest.mark.parametrize("own", [True, False])
def test_forward_shapes(own):
    target = _target()
    heads = _trained_like(new_heads(target, num_heads=4, num_blocks=2, own_projection=own))
    feats = torch.randn(2, 3, D)
    logits = heads(feats, lm_head=target.lm_head)
    assert logits.shape == (4, 2, 3, V)
    # the LM head as a module or as its weight gives the same logits
    assert torch.allclose(heads(feats, lm_head=target.lm_head.weight), logits, atol=1e-6)
    assert heads(torch.randn(5, D), lm_head=target.lm_head).shape == (4, 5, V)
    names = set(heads.state_dict())
    assert {"0.0.linear.weight", "0.0.linear.bias", "3.1.linear.weight"} <= names
    assert ("0.2.weight" in names) is own and ("3.2.weight" in names) is own
    if not own:
        with pytest.raises(ValueError, match="lm_head"):
            heads(feats)


@pytest.mark.parametrize("own", [True, False])
def test_heads_in_another_dtype_than_the_target(own):
    target = _target()  # fp32
    heads = new_heads(target, num_heads=2, own_projection=own).to(torch.bfloat16)
    logits = heads(torch.randn(3, D), target.lm_head)
    assert logits.shape == (2, 3, V)
    assert logits.dtype == (torch.bfloat16 if own else torch.float32)


@pytest.mark.parametrize("own", [True, False])
def test_fresh_heads_start_as_the_lm_head(own):
    """Zero-initialised blocks are the identity, and a Medusa-1 projection starts as the
    LM head: every head's logits are the target's own at the start."""
    target = _target()
    heads = new_heads(target, num_heads=3, num_blocks=2, own_projection=own)
    feats = torch.randn(2, 5, D)
    assert torch.equal(heads.hidden(feats), feats.expand(3, -1, -1, -1))
    with torch.no_grad():
        expected = target.lm_head(feats)
        logits = heads(feats, lm_head=target.lm_head)
    for i in range(3):
        assert torch.allclose(logits[i], expected, atol=1e-6)
    block = heads.head(0)[0].linear
    assert not block.weight.any() and not block.bias.any()


def test_config_validation():
    with pytest.raises(ValueError, match="num_blocks 0"):
        MedusaConfig(num_heads=2, num_blocks=0, hidden_size=D, vocab_size=V, own_projection=False)
    with pytest.raises(ValueError, match="integer"):
        MedusaConfig(num_heads=2.5, num_blocks=1, hidden_size=D, vocab_size=V)
    with pytest.raises(ValueError, match="LM head"):
        init_heads(MedusaConfig(num_heads=1, num_blocks=1, hidden_size=D, vocab_size=V))
    # projection only (no blocks) is a valid Medusa-1 head
    MedusaConfig(num_heads=1, num_blocks=0, hidden_size=D, vocab_size=V)


@pytest.mark.parametrize("own", [True, False])
def test_save_load_round_trip(tmp_path, own):
    target = _target()
    heads = _trained_like(new_heads(target, num_heads=3, num_blocks=1, own_projection=own))
    save_heads(heads, tmp_path / "heads", {"metrics.json": {"top1": [0.5]}})
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == [
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    assert not list(tmp_path.glob(".heads*"))  # no temporary left behind
    back = load_heads(tmp_path / "heads")
    assert back.config == heads.config
    for name, tensor in heads.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    feats = torch.randn(4, D)
    assert torch.equal(back(feats, target.lm_head), heads(feats, target.lm_head))
    half = load_heads(tmp_path / "heads", dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16 and not half.training
    check_heads_fit(back, tmp_path / "heads", target, "target_dir")


def test_heads_of_another_target_are_refused(tmp_path):
    heads = new_heads(_target(), num_heads=2)
    save_heads(heads, tmp_path / "h")
    for other, what in ((_target(hidden=24), "hidden size"), (_target(vocab=48), "vocabulary")):
        with pytest.raises(ArtefactError, match=f"Medusa {what}") as err:
            check_heads_fit(load_heads(tmp_path / "h"), tmp_path / "h", other, "other_dir")
        _one_line(err.value, tmp_path / "h")
        assert "other_dir" in str(err.value)


def _saved(tmp_path, own=True):
    heads = new_heads(_target(), num_heads=2, num_blocks=1, own_projection=own)
    save_heads(heads, tmp_path / "h")
    return tmp_path / "h"


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_file_is_named(tmp_path, missing):
    heads_dir = _saved(tmp_path)
    (heads_dir / missing).unlink()
    with pytest.raises(MedusaError) as err:
        load_heads(heads_dir)
    _one_line(err.value, heads_dir / missing)


def test_corrupt_and_mismatched_files_are_named(tmp_path):
    heads_dir = _saved(tmp_path)
    weights, config = heads_dir / "model.safetensors", heads_dir / "config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])  # truncated
    with pytest.raises(ArtefactError) as err:
        load_heads(heads_dir)
    _one_line(err.value, weights)
    weights.write_bytes(good_weights)

    config.write_text("{not json")
    with pytest.raises(ArtefactError) as err:
        load_heads(heads_dir)
    _one_line(err.value, config)

    fields = json.loads(good_config)
    config.write_text(json.dumps({**fields, "num_heads": "two"}))
    with pytest.raises(MedusaError, match="not a Medusa heads config") as err:
        load_heads(heads_dir)
    _one_line(err.value, config)

    config.write_text(json.dumps({**fields, "architecture": "EagleHead"}))
    with pytest.raises(MedusaError, match="architecture") as err:
        load_heads(heads_dir)
    _one_line(err.value, config)

    config.write_text(json.dumps({**fields, "num_heads": 3}))  # the file holds 2
    with pytest.raises(MedusaError, match="missing") as err:
        load_heads(heads_dir)
    _one_line(err.value, weights)

    config.write_text(json.dumps({**fields, "hidden_size": 2 * D}))
    with pytest.raises(MedusaError, match="shape") as err:
        load_heads(heads_dir)
    _one_line(err.value, weights)

    config.write_text(json.dumps({**fields, "own_projection": False}))  # file has projections
    with pytest.raises(MedusaError, match="unexpected") as err:
        load_heads(heads_dir)
    _one_line(err.value, weights)

    config.write_text(good_config)
    state = load_file(weights)
    state["0.0.linear.bias"] = state["0.0.linear.bias"].long()
    save_file(state, weights)
    with pytest.raises(MedusaError, match="not a float") as err:
        load_heads(heads_dir)
    _one_line(err.value, weights)
