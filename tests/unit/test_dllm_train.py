"""D-LLM training, LoRA merge and HF conversion on the micro base model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from spadec.base.prepare import prepare_base
from spadec.config import resolve_stage
from spadec.dllm.build import dllm_config_from, dllm_from_base
from spadec.dllm.data import IGNORE, collate, encode_example
from spadec.dllm.merge import convert_hf, merge_lora
from spadec.dllm.train import (
    activation_loss,
    finetune,
    learning_rate,
    sparsity_weight,
)
from spadec.share_targets import check_layer_profile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro_base(micro_config, micro_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("micro_base") / "base"
    prepare_base(resolve_stage(micro_config, "micro", "base"), micro_data, out, out.parent / "ckpt")
    return out


def _settings(micro_config, **overrides):
    settings = resolve_stage(micro_config, "micro", "dllm")
    settings.update(overrides)
    return settings


def test_sparsity_schedule_and_loss_by_hand():
    assert sparsity_weight(0, 2, 5.0) == 0.0
    assert sparsity_weight(1, 2, 5.0) == pytest.approx(5.0 * 2**-0.5)
    assert sparsity_weight(3, 2, 5.0) == 5.0
    assert learning_rate(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert learning_rate(100, 100, 10, 1.0) == pytest.approx(0.0)
    gates = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    loss, share = activation_loss(gates, mask, target=0.5, reserve=1)
    # Only position 1 counts (position 0 is reserved, position 2 is masked): share 1.0.
    assert share.item() == pytest.approx(1.0) and loss.item() == pytest.approx(0.5)


def test_layer_rate_profile_is_matched_by_rank():
    """The profile holds the set of per-layer rates, not which layer has which rate."""
    # 4 tokens, 1 static layer + 3 dynamic ones run by 1/4, 4/4 and 2/4 of the tokens.
    dynamic = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 0]], dtype=torch.float)
    gates = torch.cat([torch.ones(4, 1), dynamic], dim=-1)[None]
    mask = torch.ones(1, 4, dtype=torch.bool)

    def loss(profile):
        value, _ = activation_loss(
            gates, mask, 0.5, 0, "layer", dynamic_start=1, layer_profile=profile
        )
        return value.item()

    assert loss([1.0, 0.25, 0.5]) == pytest.approx(0.0)
    assert loss([0.5, 1.0, 0.25]) == pytest.approx(0.0)  # any order: the same set
    # sorted rates (.25, .5, 1) against (.25, .25, .25): off by 0, .25, .75
    assert loss([0.25, 0.25, 0.25]) == pytest.approx(1.0 / 3)


def test_layer_rate_profile_is_checked_against_the_model():
    check_layer_profile([0.15, 0.15, 0.85, 0.85, 1.0, 1.0], 0.75, 8, 2)
    with pytest.raises(ValueError, match="6 dynamic layers"):
        check_layer_profile([0.5, 0.5], 0.75, 8, 2)
    with pytest.raises(ValueError, match="not target_share 0.75"):
        check_layer_profile([0.5] * 6, 0.75, 8, 2)


def test_answer_only_labels(micro_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_base)
    ex = encode_example(tok, {"instruction": "Say hi.", "response": "hi there"}, 64)
    supervised = [
        t for t, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE
    ]
    assert tok.decode(supervised).startswith("hi there")
    batch = collate([ex, {"input_ids": [1, 2], "labels": [IGNORE, 2]}], tok.pad_token_id)
    assert (
        batch["attention_mask"][1].tolist()[:2] == [1, 1]
        and batch["labels"][1, 2:].eq(IGNORE).all()
    )


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="no D-LLM variant for model_type 'gpt2'"):
        dllm_config_from(GPT2Config(), {})


def test_finetune_merge_convert_round_trip(micro_config, micro_data, micro_base, tmp_path):
    settings = _settings(micro_config)
    metrics = finetune(settings, micro_base, micro_data, tmp_path / "adapter", tmp_path / "ckpt")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert metrics["steps"] > 0 and metrics["history"]
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("router" in k for k in adapter)

    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(
        dllm_from_base(micro_base, settings), str(tmp_path / "adapter")
    ).eval()
    merge_lora(tmp_path / "adapter", micro_base, settings, tmp_path / "merged")
    info = convert_hf(tmp_path / "merged", tmp_path / "hf", "float32")
    assert info["model_type"] == "spadec_dllm_llama"
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "spadec_dllm_llama" and "router_hidden" in config
    ids = torch.randint(3, 200, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = peft_model(input_ids=ids), final(ids)
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(after.gates, before.gates)


def test_finetune_resumes_after_kill_to_the_same_adapter(
    micro_config, micro_data, micro_base, tmp_path
):
    """SIGKILL the job after its first checkpoint; the restarted job must end with exactly the
    adapter of an unbroken run (same batches, Gumbel noise and dropout per step)."""
    import os
    import subprocess
    import sys

    from spadec.io import write_json
    from tests.conftest import REPO, kill_after_checkpoint

    settings = _settings(micro_config, epochs=1.0, checkpoint_every=4)
    write_json(tmp_path / "dllm.json", settings)

    def cmd(out, ckpt):
        return [
            sys.executable,
            str(REPO / "workflow_scripts" / "finetune_dllm.py"),
            "--config",
            str(tmp_path / "dllm.json"),
            "--base",
            str(micro_base),
            "--data",
            str(micro_data),
            "--ckpt",
            str(ckpt),
            "--out",
            str(out),
        ]

    env = {**os.environ, "SPADEC_NO_PROGRESS": "1"}
    subprocess.run(
        cmd(tmp_path / "ref", tmp_path / "ck_ref"),
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    ckpt = tmp_path / "ck"
    kill_after_checkpoint(cmd(tmp_path / "out", ckpt), ckpt / "step_4" / "state.json", env)
    assert not (tmp_path / "out").exists(), "a killed job must not leave an output"
    subprocess.run(
        cmd(tmp_path / "out", ckpt), env=env, check=True, capture_output=True, timeout=600
    )
    resumed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert resumed["resumed_from_step"] >= 4 and resumed["steps"] > resumed["resumed_from_step"]
    a = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    b = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_finetune_in_two_cpu_processes(micro_config, micro_data, micro_base, tmp_path):
    """One launcher, two ranks over gloo (as a multi-GPU job runs them, one per GPU)."""
    import subprocess
    import sys

    from spadec.io import write_json
    from tests.conftest import REPO

    settings = _settings(micro_config)
    write_json(tmp_path / "dllm.json", settings)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spadec.launch",
            "--gpus",
            "0",
            "--nproc",
            "2",
            "--",
            str(REPO / "workflow_scripts" / "finetune_dllm.py"),
            "--config",
            str(tmp_path / "dllm.json"),
            "--base",
            str(micro_base),
            "--data",
            str(micro_data),
            "--ckpt",
            str(tmp_path / "ck"),
            "--out",
            str(tmp_path / "adapter"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "adapter" / "metrics.json").read_text())
    single_steps = max(
        1, round(settings["epochs"] * (metrics["examples"] // settings["batch_size"]))
    )
    # Two ranks split each epoch: half the optimizer steps of one process.
    assert metrics["steps"] < single_steps
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


ROUTING_RECIPE = {  # config.yaml's (docs/routing.md), for the micro model's 6 dynamic layers
    "share_constraint": "layer",
    "layer_rate_band": None,
    "layer_rate_profile": [0.2, 0.2, 0.8, 0.8, 0.8, 0.8],  # target_share 0.7 of 8 layers
    "router_noise_start": 0.0,
    "router_noise_final": 0.0,
}


def _routing_after_finetune(micro_config, micro_data, micro_base, out, **recipe) -> dict:
    from peft import PeftModel
    from transformers import AutoTokenizer

    from spadec.dllm.evaluate import heldout_dialogues, score

    settings = _settings(micro_config, epochs=3.0, **recipe)
    finetune(settings, micro_base, micro_data, out / "adapter", out / "ckpt")
    model = dllm_from_base(micro_base, settings)
    model = PeftModel.from_pretrained(model, str(out / "adapter")).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(micro_base)
    seqs, starts = heldout_dialogues(tokenizer, micro_data, 64, 3000)
    return score(model, seqs, is_dllm=True, answer_starts=starts)["routing"]


def test_routers_come_out_token_dependent(micro_config, micro_data, micro_base, tmp_path):
    """The routing recipe yields routers that run a layer for some tokens and skip it for
    others; the published recipe (per-token share, constant noise), trained as long, leaves
    every layer either run or skipped by (nearly) every token on this model."""
    routing = _routing_after_finetune(
        micro_config, micro_data, micro_base, tmp_path / "recipe", **ROUTING_RECIPE
    )
    assert routing["token_dependent_layers"] >= routing["dynamic_layers"] / 4, routing
    assert routing["modal_set_disagreement"] > 0.1, routing
    published = _routing_after_finetune(
        micro_config,
        micro_data,
        micro_base,
        tmp_path / "published",
        share_constraint="token",
        layer_rate_band=None,
        router_noise_start=1.0,
        router_noise_final=1.0,
    )
    assert published["token_dependent_layers"] < published["dynamic_layers"] / 4, published
