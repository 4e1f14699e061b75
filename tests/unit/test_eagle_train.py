"""EAGLE head training under DeepSpeed on the CPU: one process, two, a killed and resumed
run, stale checkpoints, and the loss/config helpers."""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from spadec.eagle.data import write_shard
from spadec.eagle.ds_runtime import MARKER, EagleTrainError, deepspeed_config
from spadec.eagle.head import load_head
from spadec.eagle.losses import head_losses
from spadec.eagle.train import split_samples, target_tensors, train_head
from spadec.io import read_json, write_json
from tests.conftest import REPO, job_env, resumes_to_reference, tiny_llama, torch_threads

DS_CONFIG = REPO / "configs" / "deepspeed" / "zero2.json"
SCRIPT = REPO / "workflow_scripts" / "train_eagle.py"
# 24 samples, 5 held out: 19 train -> 4 optimizer steps per epoch (micro 2 x accum 2).
SETTINGS = {
    "seed": 0,
    "lr": 3e-3,
    "micro_batch": 2,
    "grad_accum": 2,
    "grad_clip": 0.5,
    "epochs": 8,
    "noise_amplitude": 0.2,
    "max_len": 64,
    "heldout_fraction": 0.2,
    "train_precision": "fp32",
    "warmup_steps": 2,
    "weight_decay": 0.0,
    "value_weight": 1.0,
    "prob_weight": 0.1,
    "checkpoint_every": 5,
    "log_every": 5,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny tied-embedding Llama target and two shards of its features."""
    root = tmp_path_factory.mktemp("eagle_train")
    model = tiny_llama(path=root / "target", tie_word_embeddings=True)
    rng = random.Random(0)
    records = [
        {
            "id": i,
            "prompt_ids": [rng.randrange(64) for _ in range(rng.randint(3, 6))],
            "response_ids": [rng.randrange(64) for _ in range(rng.randint(6, 12))],
        }
        for i in range(24)
    ]
    for s in range(2):
        write_shard(
            model, records[s * 12 : (s + 1) * 12], root / f"shard{s}", shard=s, shards=2, target="t"
        )
    return {"root": root, "target": root / "target", "shards": [root / "shard0", root / "shard1"]}


def _args(tiny, config, out, ckpt) -> list[str]:
    data = [str(d) for d in tiny["shards"]]
    return [
        str(SCRIPT),
        "--config",
        str(config),
        "--target",
        str(tiny["target"]),
        "--data",
        *data,
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """One unbroken in-process run (world 1) with checkpoints every 5 steps."""
    out = tmp_path_factory.mktemp("ref")
    with torch_threads(1):
        metrics = train_head(
            SETTINGS, tiny["target"], tiny["shards"], out / "head", out / "ckpt", DS_CONFIG
        )
    return {"metrics": metrics, "head": out / "head", "ckpt": out / "ckpt"}


def test_one_process_learns_and_writes_a_loadable_head(tiny, reference):
    metrics, head_dir = reference["metrics"], reference["head"]
    head = load_head(head_dir)
    assert head.fc.in_features == 64
    target = LlamaForCausalLM.from_pretrained(tiny["target"])
    assert torch.equal(head.embed_tokens.weight, target.get_input_embeddings().weight)
    on_disk = read_json(head_dir / "metrics.json")
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["world_size"] == 1 and metrics["resumed_from_step"] == 0
    assert (metrics["train_samples"], metrics["heldout_samples"]) == (19, 5)
    assert metrics["steps"] == 32 and len(metrics["history"]) == 7  # 5, 10, ..., 30, 32
    for key in ("heldout_top1", "heldout_top3"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["heldout_top1"] <= metrics["heldout_top3"]
    first, last = metrics["history"][0], metrics["history"][-1]
    assert last["loss"] < first["loss"] and last["vloss"] < first["vloss"]
    info = read_json(head_dir / "run_info.json")
    assert info["stage"] == "train_eagle" and info["deepspeed_config"]["zero_optimization"]
    # Checkpoints every 5 steps (none at the last); the newest two are kept, complete.
    kept = sorted(p.name for p in reference["ckpt"].glob("step_*"))
    assert kept == ["step_25", "step_30"]
    assert all((reference["ckpt"] / k / MARKER).is_file() for k in kept)


def test_two_cpu_processes_through_the_launcher(tiny, tmp_path):
    settings = {**SETTINGS, "epochs": 2, "checkpoint_every": 2}
    write_json(tmp_path / "eagle.json", settings)
    cmd = [sys.executable, "-m", "spadec.launch", "--gpus", "0", "--nproc", "2"]
    cmd += ["--backend", "deepspeed", "--"]
    cmd += _args(tiny, tmp_path / "eagle.json", tmp_path / "head", tmp_path / "ckpt")
    proc = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = read_json(tmp_path / "head" / "metrics.json")
    # Two ranks split each epoch: 19 // (2 * 2 * 2) = 2 optimizer steps per epoch.
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    assert metrics["global_batch"] == 8
    load_head(tmp_path / "head")
    # ZeRO-2: one optimizer shard per rank, and the marker records the world.
    step_2 = tmp_path / "ckpt" / "step_2"
    assert len(list(step_2.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert read_json(step_2 / MARKER)["world_size"] == 2


def test_killed_run_resumes_to_the_unbroken_head(tiny, reference, tmp_path):
    """SIGKILL after the first checkpoint; the restarted job ends bit-identical to the
    unbroken (in-process) run: same batches, noise and optimizer state per step."""
    write_json(tmp_path / "eagle.json", SETTINGS)
    cmd = [
        sys.executable,
        *_args(tiny, tmp_path / "eagle.json", tmp_path / "head", tmp_path / "ck"),
    ]
    resumes_to_reference(
        cmd, tmp_path / "head", tmp_path / "ck", reference["metrics"], reference["head"]
    )


def test_stale_checkpoints_are_ignored(tiny, reference, tmp_path, caplog, one_thread):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference["ckpt"], ckpt)
    caplog.set_level(logging.INFO, logger="spadec.eagle.ds_runtime")
    other = {**SETTINGS, "lr": 1e-3, "epochs": 1}
    metrics = train_head(other, tiny["target"], tiny["shards"], tmp_path / "head", ckpt, DS_CONFIG)
    assert metrics["resumed_from_step"] == 0 and metrics["steps"] == 4
    assert "step_30 (other settings)" in caplog.text
    # A half-written checkpoint (no marker) of the right settings is skipped too.
    caplog.clear()
    (ckpt / "step_30" / MARKER).unlink()
    train_head(
        SETTINGS | {"epochs": 4}, tiny["target"], tiny["shards"], tmp_path / "h2", ckpt, DS_CONFIG
    )
    assert "step_30 (incomplete)" in caplog.text


def test_bf16_trains_and_saves_fp32_master_weights(tiny, tmp_path, one_thread):
    settings = {**SETTINGS, "train_precision": "bf16", "epochs": 1}
    metrics = train_head(
        settings, tiny["target"], tiny["shards"], tmp_path / "head", tmp_path / "ck", DS_CONFIG
    )
    assert metrics["train_precision"] == "bf16" and metrics["heldout"]["vloss"] > 0
    fc = load_file(tmp_path / "head" / "model.safetensors")["fc.weight"]
    # The optimizer's fp32 master copy, not the bf16 working weights rounded back up.
    assert fc.dtype == torch.float32 and not torch.equal(fc, fc.bfloat16().float())


def test_missing_shard_dir_is_named(tiny, tmp_path):
    missing = tmp_path / "no_such_shard"
    with pytest.raises(EagleTrainError, match=f"shard.*not found: {missing}"):
        train_head(
            SETTINGS,
            tiny["target"],
            [tiny["shards"][0], missing],
            tmp_path / "o",
            tmp_path / "c",
            DS_CONFIG,
        )


def test_losses_count_answer_positions_only():
    torch.manual_seed(0)
    w_lm = torch.randn(10, 4)
    target = torch.randn(1, 3, 4)
    pred = target.clone()
    pred[0, 1] += 1.0  # off by 1 in every dimension: SmoothL1 = 0.5 each
    pred[0, 2] += 100.0  # padding: must not count
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = head_losses(pred, target, mask, w_lm)
    assert out["count"] == 2
    assert out["vloss_sum"].item() == pytest.approx(0.5)
    assert out["top1"] <= out["top3"] <= 2 and out["top1"] >= 1  # position 0 is exact
    exact = head_losses(target, target, mask, w_lm)
    probs = torch.softmax(target[0, :2] @ w_lm.T, -1)
    entropy = -(probs * probs.log()).sum()
    assert exact["ploss_sum"].item() == pytest.approx(entropy.item(), rel=1e-5)
    assert exact["top1"] == 2


def test_split_is_shuffled_seeded_and_covers_all():
    train, held = split_samples(100, 0.05, seed=3)
    assert len(held) == 5 and sorted(train + held) == list(range(100))
    assert held != list(range(95, 100))  # not the tail, as upstream's os.walk order was
    assert split_samples(100, 0.05, seed=3) == (train, held)
    assert split_samples(2, 0.05, seed=0)[1] != []


def test_deepspeed_config_is_filled_and_checked():
    template = read_json(DS_CONFIG)
    settings = {**SETTINGS, "train_precision": "bf16"}
    cfg = deepspeed_config(template, settings, total_steps=100, warmup=10)
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert cfg["zero_optimization"]["stage"] == 2 and "_comment" not in cfg
    assert cfg["scheduler"]["params"]["total_num_steps"] == 100
    assert cfg["scheduler"]["params"]["warmup_max_lr"] == settings["lr"]
    assert "auto" not in json.dumps(cfg)
    with pytest.raises(EagleTrainError, match="optimizer"):
        deepspeed_config({**template, "optimizer": {"type": "AdamW"}}, settings, 1, 1)
    with pytest.raises(EagleTrainError, match="'auto' at zero_optimization.stage"):
        deepspeed_config({**template, "zero_optimization": {"stage": "auto"}}, settings, 1, 1)


def test_target_tensors_tied_and_untied(tiny, tmp_path):
    _, embed, head = target_tensors(tiny["target"])
    assert torch.equal(embed, head)  # tied: the embedding is the LM head
    model = tiny_llama(path=tmp_path / "untied", tie_word_embeddings=False)
    config, embed, head = target_tensors(tmp_path / "untied")
    assert config.hidden_size == 32
    assert torch.equal(head, model.lm_head.weight) and not torch.equal(head, embed)


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_deepspeed_checkpoint_loads_never_run_pickled_code(tmp_path):
    import pickle

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
        TorchCheckpointEngine,
    )

    from spadec.eagle.ds_safe_load import weights_only_checkpoint_loads

    bad = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(1)}, "extra": _Exploit()}, bad)
    with weights_only_checkpoint_loads(), pytest.raises(pickle.UnpicklingError):
        TorchCheckpointEngine.load(None, str(bad))
    assert TorchCheckpointEngine.load.__module__.startswith("deepspeed")  # restored


def test_fp16_loss_scaler_state_loads_without_pickle_code(tmp_path):
    """fp16 runs keep a DynamicLossScaler in the optimizer state (fp16 itself does not run
    on this CPU, so the round trip is checked on the object DeepSpeed would save)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
        TorchCheckpointEngine,
    )
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    from spadec.eagle.ds_safe_load import weights_only_checkpoint_loads

    scaler = DynamicLossScaler(
        init_scale=2**16,
        scale_window=1000,
        min_scale=1,
        delayed_shift=2,
        consecutive_hysteresis=False,
    )
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": scaler}}, path)
    with weights_only_checkpoint_loads():
        back = TorchCheckpointEngine.load(None, str(path))
    assert type(back["optimizer_state_dict"]["loss_scaler"]) is type(scaler)
    assert back["optimizer_state_dict"]["loss_scaler"].cur_scale == scaler.cur_scale
