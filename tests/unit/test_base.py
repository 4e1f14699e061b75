"""The base stage: tokenizer, pre-training (and its resume), HF and GGUF sources, metrics."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from spadec.base.evaluate import unigram_perplexity
from spadec.base.prepare import prepare_base
from spadec.base.sources import BaseSourceError, load_hf, packaged_gguf_path
from spadec.base.tokenizer import train_bpe_tokenizer
from spadec.config import resolve_stage
from tests.conftest import MICRO_CONFIG, kill_after_checkpoint


def test_tokenizer_round_trip_and_chat_template():
    texts = ["def f(x):\n    return x + 1  # ünïcode ✓ 🐍", "The quick brown fox."] * 50
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    for text in texts[:2]:
        assert tok.decode(tok(text)["input_ids"]) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|bos|><|user|>Hi<|eos|><|assistant|>"
    assert tok.convert_tokens_to_ids("<|eos|>") == tok.eos_token_id


def test_unigram_baseline_matches_a_hand_computation():
    train = [[0, 1, 1, 2]]
    heldout = [[0, 1, 2]]
    counts = torch.tensor(
        [1.0, 3.0, 2.0]
    )  # add-one over vocab 3; train counts skip the first token
    probs = counts / counts.sum()
    expected = math.exp(-(math.log(probs[1]) + math.log(probs[2])) / 2)
    assert unigram_perplexity(train, heldout, 3) == pytest.approx(expected)


def _micro_base(micro_config, **pretrain):
    settings = resolve_stage(micro_config, "micro", "base")
    settings["pretrain"].update(pretrain)
    return settings


@pytest.mark.slow
def test_pretrain_writes_a_loadable_model_that_learned(micro_config, micro_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = _micro_base(micro_config, steps=80, batch_size=8)
    metrics = prepare_base(settings, micro_data, tmp_path / "base", tmp_path / "ckpt")
    out = tmp_path / "base"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 8 and tok.chat_template
    losses = [h["loss"] for h in metrics["loss_history"]]  # one batch each: noisy
    assert sum(losses[-3:]) / 3 < losses[0] - 0.7, losses
    assert metrics["heldout_ppl_chat"] < metrics["unigram_ppl_chat"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["greedy_tokens_per_s"] > 0 and len(saved["samples"]) == 2
    info = json.loads((out / "run_info.json").read_text())
    assert info["stage"] == "prepare_base" and info["packages"]["torch"]


def _final_weights(path):
    return load_file(path / "model.safetensors")


@pytest.mark.slow
def test_pretrain_resumes_after_kill_to_the_same_weights(micro_config, micro_data, tmp_path):
    """Kill the job right after its first checkpoint; the restarted job must end where an
    unbroken run ends (same data order, optimizer state and schedule)."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(MICRO_CONFIG.read_text().replace("steps: 12", "steps: 40"))
    cmd = [
        sys.executable,
        "-m",
        "spadec.cli",
        "prepare-base",
        "--configfile",
        str(cfg),
        "--model",
        "micro",
        "--data",
        str(micro_data),
    ]
    env = {**os.environ, "SPADEC_NO_PROGRESS": "1"}
    subprocess.run(
        [*cmd, "--out", str(tmp_path / "ref"), "--ckpt", str(tmp_path / "ck_ref")],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )

    ckpt = tmp_path / "ck"
    kill_after_checkpoint(
        [*cmd, "--out", str(tmp_path / "out"), "--ckpt", str(ckpt)],
        ckpt / "step_5" / "state.json",
        env,
    )
    assert not (tmp_path / "out").exists(), "a killed job must not leave an output"

    resumed = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out"), "--ckpt", str(ckpt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "resuming from" in resumed.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 5
    ref, out = _final_weights(tmp_path / "ref"), _final_weights(tmp_path / "out")
    assert ref.keys() == out.keys()
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0, msg=key)


def test_changed_settings_do_not_resume_stale_state(micro_config, micro_data, tmp_path):
    from spadec.base.pretrain import pretrain

    settings = _micro_base(micro_config, steps=6, checkpoint_every=3)
    pretrain(settings, micro_data, tmp_path)
    changed = copy.deepcopy(settings)
    changed["pretrain"]["lr"] *= 2
    _, _, metrics = pretrain(changed, micro_data, tmp_path)
    assert metrics["resumed_from_step"] == 0


def _tiny_hf_dir(tmp_path, tokenizer, chat_template=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg)
    path = tmp_path / "hf_model"
    model.save_pretrained(path)
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(path)
    return path, model


def test_hf_source_round_trips_a_local_model(micro_config, micro_data, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = train_bpe_tokenizer(["hello world, tiny model"] * 40, vocab_size=300)
    src, model = _tiny_hf_dir(tmp_path, tok)
    settings = resolve_stage(micro_config, "micro", "base")
    settings.update(source="hf", path=str(src))
    prepare_base(settings, micro_data, tmp_path / "base", tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    ids = torch.tensor([[1, 5, 9, 20]])
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_hf_source_without_chat_template_needs_one(micro_config, tmp_path):
    tok = train_bpe_tokenizer(["hello world, tiny model"] * 40, vocab_size=300)
    src, _ = _tiny_hf_dir(tmp_path, tok, chat_template=False)
    settings = resolve_stage(micro_config, "micro", "base")
    settings.update(source="hf", path=str(src))
    with pytest.raises(BaseSourceError, match="no chat template"):
        load_hf(settings)
    settings["chat_template"] = "alpaca"
    _, tokenizer = load_hf(settings)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add 2 and 3."}], tokenize=False
    )
    assert "### Instruction:\nAdd 2 and 3.\n\n### Response:\n" in text


def test_hf_source_refuses_a_directory_without_a_model(micro_config, tmp_path):
    settings = resolve_stage(micro_config, "micro", "base")
    settings.update(source="hf", path=str(tmp_path))
    with pytest.raises(BaseSourceError, match="no config.json"):
        load_hf(settings)


def test_missing_gguf_package_is_explained():
    with pytest.raises(BaseSourceError, match="not installed"):
        packaged_gguf_path("no_such_package_xyz", "model.gguf")


@pytest.mark.slow
def test_gguf_package_source_gives_a_real_instruct_model(micro_config, micro_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spadec.base.chat import prompt_ids
    from spadec.decoding.autoregressive import autoregressive_decode

    settings = resolve_stage(micro_config, "micro", "base")
    settings.update(source="gguf_package")
    settings["eval"].update(max_ppl_tokens=64, decode_prompts=1, max_new_tokens=4)
    metrics = prepare_base(settings, micro_data, tmp_path / "base", tmp_path / "ckpt")
    assert metrics["num_layers"] == 30
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert model.config.num_key_value_heads == 3 and tok.chat_template
    ids = torch.tensor([prompt_ids(tok, "What is the capital of France? Answer in one sentence.")])
    answer = tok.decode(autoregressive_decode(model, ids, 12, tok.eos_token_id).output_ids)
    assert "Paris" in answer


def test_batches_are_reproducible_and_chat_windows_start_at_a_dialogue():
    from spadec.base.pretrain import TokenStream, sample_batch

    chat = TokenStream(torch.arange(1000), torch.tensor([0, 100, 250, 400, 800]))
    text = TokenStream(torch.arange(5000, 6000), torch.tensor([0]))
    streams = {"chat": chat, "text": text}
    a = sample_batch(streams, 32, 64, chat_share=1.0, seed=7)
    assert torch.equal(a, sample_batch(streams, 32, 64, chat_share=1.0, seed=7))
    assert not torch.equal(a, sample_batch(streams, 32, 64, chat_share=1.0, seed=8))
    assert set(a[:, 0].tolist()) <= {0, 100, 250, 400, 800}
    mixed = sample_batch(streams, 64, 64, chat_share=0.5, seed=1)
    from_text = (mixed[:, 0] >= 5000).sum().item()
    assert 10 < from_text < 54
