"""Self-distillation and EAGLE data shards: batched generation equals batch-1 decoding,
shards round-trip, the training shift, resume of a killed distillation."""

from __future__ import annotations

import json

import pytest
import torch

from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.batched import generate_batch
from spadec.eagle.data import (
    EagleDataError,
    ShardReader,
    collate_pairs,
    shard_records,
    target_features,
    training_pair,
    write_shard,
)
from tests.unit.test_dllm_model import make as make_dllm
from tests.unit.test_eagle_decode import dense

EOS, PAD = 2, 0


def prompts(vocab, lengths=(5, 9, 3, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("kind", ["dense", "dllm"])
def test_batched_generation_equals_batch_one_greedy_decoding(kind):
    model = dense() if kind == "dense" else make_dllm("llama-gqa")
    vocab = model.config.vocab_size
    ps = prompts(vocab)
    batched = generate_batch(model, ps, 20, EOS, PAD)
    decode = autoregressive_decode
    for p, got in zip(ps, batched, strict=True):
        assert got == decode(model, torch.tensor([p]), 20, EOS).output_ids


def test_batched_generation_stops_each_row_at_eos():
    model = dense()
    ps = prompts(model.config.vocab_size)
    free = generate_batch(model, ps, 12, eos_token_id=-1, pad_token_id=PAD)
    eos = free[0][4]  # make row 0's fifth token the EOS
    cut = generate_batch(model, ps, 12, eos_token_id=eos, pad_token_id=PAD)
    assert cut[0] == free[0][:5]
    for row_free, row_cut in zip(free, cut, strict=True):
        expect = row_free[: row_free.index(eos) + 1] if eos in row_free else row_free
        assert row_cut == expect


def test_shards_partition_the_records():
    recs = list(range(11))
    parts = [shard_records(recs, i, 3) for i in range(3)]
    assert [len(p) for p in parts] == [4, 4, 3] and sum(parts, []) == recs
    with pytest.raises(EagleDataError, match="out of range"):
        shard_records(recs, 3, 3)


def records(vocab, n=5):
    ps = prompts(vocab, lengths=[4 + i for i in range(n)], seed=1)
    rs = prompts(vocab, lengths=[6 + 2 * i for i in range(n)], seed=2)
    return [
        {"id": f"r{i}", "prompt_ids": p, "response_ids": r}
        for i, (p, r) in enumerate(zip(ps, rs, strict=True))
    ]


@pytest.mark.parametrize("kind", ["dense", "dllm"])
def test_a_shard_round_trips_ids_masks_and_features(tmp_path, kind):
    model = dense() if kind == "dense" else make_dllm("llama-gqa")
    model = model.float()
    recs = records(model.config.vocab_size)
    manifest = write_shard(
        model, recs, tmp_path / "shard_0", shard=0, shards=1, target=kind, batch_size=2
    )
    assert manifest["samples"] == 5 and manifest["feature_dtype"] == "float16"
    reader = ShardReader([tmp_path / "shard_0"])
    assert len(reader) == 5
    for i, rec in enumerate(recs):
        s = reader[i]
        ids = rec["prompt_ids"] + rec["response_ids"]
        assert s.input_ids.tolist() == ids
        assert s.loss_mask.tolist() == [0] * len(rec["prompt_ids"]) + [1] * len(rec["response_ids"])
        alone = target_features(model, torch.tensor([ids]), torch.ones(1, len(ids)))[0]
        # padded batches give the same features (right padding, causal attention)
        torch.testing.assert_close(s.features.float(), alone, rtol=2e-3, atol=2e-3)


def test_training_pairs_shift_features_and_tokens(tmp_path):
    model = dense().float()
    recs = records(model.config.vocab_size, n=2)
    write_shard(model, recs, tmp_path / "s", shard=0, shards=1, target="dense")
    sample = ShardReader([tmp_path / "s"])[1]
    pair = training_pair(sample, max_len=100)
    n = sample.input_ids.numel()
    assert pair["input_ids"][: n - 1].tolist() == sample.input_ids[1:].tolist()
    assert torch.equal(pair["target"][: n - 1], sample.features[1:].float())
    assert pair["loss_mask"][-1] == 0  # nothing to predict after the last token
    assert pair["loss_mask"][: n - 1].tolist() == sample.loss_mask[1:].float().tolist()
    batch = collate_pairs([training_pair(ShardReader([tmp_path / "s"])[0], 100), pair])
    assert batch["attention_mask"].sum(1).tolist() == [
        ShardReader([tmp_path / "s"])[0].input_ids.numel(),
        n,
    ]


def test_missing_or_broken_shards_fail_with_the_path(tmp_path):
    with pytest.raises(EagleDataError, match="not an EAGLE data shard"):
        ShardReader([tmp_path / "nope"])
    with pytest.raises(EagleDataError, match="no samples"):
        write_shard(dense(), [], tmp_path / "s", shard=0, shards=2, target="dense")


def test_distillation_resumes_from_its_partial_file(tmp_path, micro_data, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from spadec.base.tokenizer import train_bpe_tokenizer
    from spadec.eagle import distill as distill_mod
    from spadec.io import read_jsonl

    corpus = [r["text"] for r in read_jsonl(micro_data / "corpus_train.jsonl")][:200]
    tok = train_bpe_tokenizer(corpus, vocab_size=300)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    target = tmp_path / "target"
    LlamaForCausalLM(cfg).save_pretrained(target)
    tok.save_pretrained(target)
    settings = {
        "seed": 0,
        "dtype": "float32",
        "distill_batch_size": 4,
        "distill_max_new_tokens": 8,
        "distill_temperature": 0.0,
    }
    full = distill_mod.distill(
        settings, target, micro_data, tmp_path / "a", tmp_path / "ck1", "dense"
    )
    assert not (tmp_path / "ck1" / "distill.partial.jsonl").exists()
    whole = read_jsonl(tmp_path / "a" / "distill.jsonl")

    # A run killed after its first batch: the partial file holds 4 records and a torn line.
    calls = {"n": 0}
    real = distill_mod.generate_batch

    def dies_after_one_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_mod, "generate_batch", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        distill_mod.distill(settings, target, micro_data, tmp_path / "b", tmp_path / "ck2", "dense")
    partial = tmp_path / "ck2" / "distill.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 4
    with partial.open("a") as f:
        f.write('{"id": "torn')
    monkeypatch.setattr(distill_mod, "generate_batch", real)
    again = distill_mod.distill(
        settings, target, micro_data, tmp_path / "b", tmp_path / "ck2", "dense"
    )
    assert again["generated_tokens_this_run"] < full["generated_tokens_this_run"]
    assert read_jsonl(tmp_path / "b" / "distill.jsonl") == whole
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["prompts"] == len(whole)
