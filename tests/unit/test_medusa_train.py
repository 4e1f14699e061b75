"""Medusa heads training under DeepSpeed on the CPU: the targets' shift, the loss, a run
that learns, a killed and resumed run, stale checkpoints and the Medusa-2 format."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import sys

import pytest
import torch

from spadec.eagle.data import Sample, write_shard
from spadec.eagle.ds_runtime import MARKER, EagleTrainError
from spadec.io import read_json, write_json
from spadec.medusa.heads import check_heads_fit, load_heads
from spadec.medusa.train import (
    CADENCE_KEYS,
    TRAIN_KEYS,
    MedusaTrainError,
    collate,
    combined_loss,
    medusa_losses,
    medusa_targets,
    train_heads,
)
from tests.conftest import REPO, resumes_to_reference, tiny_llama, torch_threads

DS_CONFIG = REPO / "configs" / "deepspeed" / "zero2.json"
SCRIPT = REPO / "workflow_scripts" / "train_medusa.py"
VOCAB = 64
# 24 samples, 5 held out: 19 train -> 4 optimizer steps per epoch (micro 2 x accum 2).
SETTINGS = {
    "seed": 0,
    "num_heads": 3,
    "num_blocks": 1,
    "own_projection": True,
    "lr": 1e-2,
    "micro_batch": 2,
    "grad_accum": 2,
    "grad_clip": 1.0,
    "epochs": 8,
    "max_len": 64,
    "heldout_fraction": 0.2,
    "train_precision": "fp32",
    "warmup_steps": 2,
    "weight_decay": 0.0,
    "decay": 0.8,
    "checkpoint_every": 5,
    "log_every": 5,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untied Llama target and two shards of its features. The answers count up
    by one (mod V), so the token two or more ahead follows from the current one."""
    root = tmp_path_factory.mktemp("medusa_train")
    model = tiny_llama(path=root / "target", vocab_size=VOCAB, tie_word_embeddings=False)
    rng = random.Random(0)
    records = []
    for i in range(24):
        start = rng.randrange(VOCAB)
        records.append(
            {
                "id": i,
                "prompt_ids": [rng.randrange(VOCAB) for _ in range(rng.randint(3, 6))],
                "response_ids": [(start + j) % VOCAB for j in range(rng.randint(8, 14))],
            }
        )
    for s in range(2):
        write_shard(
            model, records[s * 12 : (s + 1) * 12], root / f"shard{s}", shard=s, shards=2, target="t"
        )
    return {
        "target": root / "target",
        "model": model,
        "shards": [root / "shard0", root / "shard1"],
    }


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """One unbroken in-process run (world 1) with checkpoints every 5 steps."""
    out = tmp_path_factory.mktemp("ref")
    with torch_threads(1):  # the subprocess runs (OMP_NUM_THREADS=1) do the same arithmetic
        metrics = train_heads(
            SETTINGS, tiny["target"], tiny["shards"], out / "heads", out / "ckpt", DS_CONFIG
        )
    return {"metrics": metrics, "heads": out / "heads", "ckpt": out / "ckpt"}


def test_targets_are_the_tokens_two_and_more_ahead():
    ids = torch.arange(10, 17)  # 7 tokens
    answer = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    sample = Sample(ids, torch.randn(7, 4), answer)
    out = medusa_targets(sample, max_len=6, num_heads=2)  # the last token is cut
    assert out["features"].shape == (6, 4)
    assert out["labels"].tolist() == [[12, 13, 14, 15, 0, 0], [13, 14, 15, 0, 0, 0]]
    assert out["mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert out["next_label"].tolist() == [11, 12, 13, 14, 15, 0]
    assert out["next_mask"].tolist() == [0, 1, 1, 1, 1, 0]
    batch = collate([out, medusa_targets(sample, max_len=3, num_heads=2)])
    assert batch["features"].shape == (2, 6, 4) and batch["labels"].shape == (2, 2, 6)
    assert batch["mask"][:, 1].tolist() == [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]


def test_losses_are_masked_means_weighted_by_decay():
    """CE per head over its counted positions only; the loss sums decay^i * CE_i."""
    logits = torch.log_softmax(torch.randn(2, 3, 5), -1)  # [K, N, V] for 3 positions

    def heads(x, lm_head=None):
        assert x.shape == (3, 4)  # only positions some head counts
        return logits

    features = torch.randn(1, 4, 4)
    labels = torch.tensor([[[1, 2, 3, 0]], [[4, 0, 1, 0]]])
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])  # position 3 never
    sums = medusa_losses(heads, features, labels, mask, None)
    assert sums["count"].tolist() == [3, 1]
    ce0 = -(logits[0, 0, 1] + logits[0, 1, 2] + logits[0, 2, 3])
    ce1 = -logits[1, 0, 4]
    assert sums["ce_sum"][0].item() == pytest.approx(ce0.item(), rel=1e-6)
    assert sums["ce_sum"][1].item() == pytest.approx(ce1.item(), rel=1e-6)
    top1_0 = sum(int(logits[0, n].argmax() == labels[0, 0, n]) for n in range(3))
    assert sums["hits"][0, 0].item() == top1_0
    assert sums["hits"][:, -1].tolist() == [3, 1]  # top-5 of 5 classes: every label
    loss, ce = combined_loss(sums, 0.8)
    assert loss.item() == pytest.approx(ce0.item() / 3 + 0.8 * ce1.item(), rel=1e-6)


def test_one_process_learns_and_writes_loadable_heads(tiny, reference):
    metrics, heads_dir = reference["metrics"], reference["heads"]
    assert read_json(heads_dir / "metrics.json") == json.loads(json.dumps(metrics))
    assert metrics["format"] == "medusa-1" and metrics["num_heads"] == 3
    assert (metrics["train_samples"], metrics["heldout_samples"]) == (19, 5)
    assert metrics["steps"] == 32 and len(metrics["history"]) == 7  # 5, 10, ..., 30, 32
    first, last = metrics["history"][0], metrics["history"][-1]
    assert set(first) == {"step", "lr", "loss", "ce_0", "ce_1", "ce_2"}
    assert last["loss"] < 0.6 * first["loss"], metrics["history"]
    held = metrics["heldout"]
    assert len(held["top1"]) == len(held["top5"]) == len(held["ce"]) == 3
    for top1, top5 in zip(held["top1"], held["top5"], strict=True):
        assert 0.0 <= top1 <= top5 <= 1.0
    assert held["top1"][0] > 0.5  # counting up is learnt from the features
    assert metrics["heldout_top1"] == held["top1"] and metrics["heldout_top5"] == held["top5"]
    heads = load_heads(heads_dir)
    assert heads.config.own_projection and heads.config.vocab_size == VOCAB
    check_heads_fit(heads, heads_dir, tiny["model"], tiny["target"])
    info = read_json(heads_dir / "run_info.json")
    assert info["stage"] == "train_medusa" and info["deepspeed_config"]["zero_optimization"]
    kept = sorted(p.name for p in reference["ckpt"].glob("step_*"))
    assert kept == ["step_25", "step_30"]
    assert all((reference["ckpt"] / k / MARKER).is_file() for k in kept)


def test_killed_run_resumes_to_the_unbroken_heads(tiny, reference, tmp_path):
    """SIGKILL after the first checkpoint; the restarted job ends bit-identical to the
    unbroken (in-process) run."""
    write_json(tmp_path / "medusa.json", SETTINGS)
    cmd = [sys.executable, str(SCRIPT), "--config", str(tmp_path / "medusa.json")]
    cmd += ["--target", str(tiny["target"]), "--data", *map(str, tiny["shards"])]
    cmd += ["--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "heads")]
    resumes_to_reference(
        cmd, tmp_path / "heads", tmp_path / "ck", reference["metrics"], reference["heads"]
    )


def test_stale_checkpoints_are_ignored(tiny, reference, tmp_path, caplog, one_thread):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference["ckpt"], ckpt)
    caplog.set_level(logging.INFO, logger="spadec.eagle.ds_runtime")
    other = {**SETTINGS, "decay": 0.5, "epochs": 1}
    metrics = train_heads(other, tiny["target"], tiny["shards"], tmp_path / "h", ckpt, DS_CONFIG)
    assert metrics["resumed_from_step"] == 0 and metrics["steps"] == 4
    assert "step_30 (other settings)" in caplog.text


def test_medusa_2_format_drafts_through_the_target_lm_head(tiny, tmp_path, one_thread):
    settings = {**SETTINGS, "own_projection": False, "num_heads": 2, "num_blocks": 2}
    settings |= {"epochs": 3, "checkpoint_every": 100}
    metrics = train_heads(
        settings, tiny["target"], tiny["shards"], tmp_path / "h", tmp_path / "c", DS_CONFIG
    )
    assert metrics["format"] == "medusa-2"
    assert metrics["trainable_parameters"] == 2 * 2 * (32 * 32 + 32)  # blocks only
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    heads = load_heads(tmp_path / "h")
    assert not heads.config.own_projection and heads.config.num_blocks == 2
    assert not any(k.endswith(".2.weight") for k in heads.state_dict())
    feats = torch.randn(3, 32)
    assert heads(feats, lm_head=tiny["model"].lm_head).shape == (2, 3, VOCAB)


def test_bad_settings_fail_before_training(tiny, tmp_path):
    args = (tiny["target"], tiny["shards"], tmp_path / "h", tmp_path / "c", DS_CONFIG)
    with pytest.raises(MedusaTrainError, match="lack decay"):
        train_heads({k: v for k, v in SETTINGS.items() if k != "decay"}, *args)
    with pytest.raises(MedusaTrainError, match="num_blocks 0"):
        train_heads({**SETTINGS, "num_blocks": 0, "own_projection": False}, *args)
    with pytest.raises(EagleTrainError, match="shard.*not found"):  # the shared check
        train_heads(SETTINGS, tiny["target"], [tmp_path / "nope"], *args[2:])
    assert not (tmp_path / "h").exists()


def test_settings_keys_match_the_schema_and_stage_parts():
    from spadec.config import STAGE_PARTS, load_schema

    keys = set(load_schema()["$defs"]["medusa"]["properties"])
    decode = set(STAGE_PARTS["medusa"]["decode"])  # the tree and acceptance: not training's
    assert keys == {*TRAIN_KEYS, *CADENCE_KEYS, "train_gpus", *decode} - {"seed"}
    assert set(STAGE_PARTS["medusa"]["train"]) == {*TRAIN_KEYS, *CADENCE_KEYS} - {"seed"}
    assert math.isclose(load_schema()["$defs"]["medusa"]["properties"]["decay"]["default"], 0.8)
