"""Smoke mode (spadec/smoke.py): what a smoke config keeps, what it swaps, and the small
Llama / Qwen2 it trains instead of the hub model."""

from __future__ import annotations

import copy

import pytest

from spadec.config import ConfigError, load_yaml, resolve_stage, validate_config
from spadec.smoke import parse_smoke_flag, smoke_config
from tests.conftest import REPO

PAPER_CONFIGS = sorted((REPO / "configs" / "paper").glob("*.yaml"))
# Settings of the method, per stage, that a smoke run must keep as the config has them.
KEPT = {
    "base": ("chat_template",),
    "dllm": (
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "router_hidden",
        "router_input_bits",
        "dynamic_start_layer",
        "reserve_initials",
        "target_share",
        "share_constraint",
        "layer_rate_band",
        "router_noise_start",
        "router_noise_final",
        "lambda_max",
        "base_lr",
        "weight_decay",
    ),
    "dllm_baseline": ("router_input_bits",),
    "eagle": ("total_tokens", "depth", "top_k", "noise_amplitude", "grad_clip"),
    "predictor": ("layer_k", "ats_mode", "acc_length", "draft_features", "lr"),
    "eval": ("methods", "compare_ats_modes", "temperature"),
}


def _keys(obj) -> set[str]:
    """Every mapping key anywhere in a nested config."""
    if isinstance(obj, dict):
        return set(obj).union(*(_keys(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_keys(v) for v in obj))
    return set()


def _paper(path):
    raw = load_yaml(path)
    return validate_config(copy.deepcopy(raw)), validate_config(smoke_config(raw))


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_smoke_keeps_every_method_setting(path):
    paper, smoke = _paper(path)
    (model,) = paper["models"]
    assert list(smoke["models"]) == [f"{model}-smoke"] and smoke["smoke"] is True
    for stage, keys in KEPT.items():
        real = resolve_stage(paper, model, stage)
        small = resolve_stage(smoke, f"{model}-smoke", stage)
        for key in keys:
            assert small[key] == real[key], f"{stage}.{key}"
    tree = resolve_stage(smoke, f"{model}-smoke", "eagle")
    assert (tree["total_tokens"], tree["depth"], tree["top_k"]) == (60, 5, 10)
    assert resolve_stage(smoke, f"{model}-smoke", "predictor")["layer_k"] == 6
    # the same benchmarks, so the tables have the paper's layout
    assert set(smoke["data"]["eval"]) == set(paper["data"]["eval"])


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_smoke_downloads_nothing_and_runs_on_a_cpu(path):
    _, smoke = _paper(path)
    assert not _keys(smoke) & {"hub_id", "path"}
    (model,) = smoke["models"]
    data = resolve_stage(smoke, model, "data")
    assert data["sft"]["source"] == "stdlib_docs"
    assert {b["source"] for b in data["eval"].values()} <= {"heldout", "project_prompts"}
    assert resolve_stage(smoke, model, "base")["source"] == "pretrain"
    for stage in ("base", "dllm", "eagle", "predictor", "eval"):
        assert resolve_stage(smoke, model, stage)["gpus"] == 0, stage
    assert resolve_stage(smoke, model, "eagle")["train_gpus"] == 0
    assert resolve_stage(smoke, model, "eagle")["dtype"] == "float32"


@pytest.mark.parametrize(
    "name, family, heads, kv_heads",
    [
        ("vicuna-7b", "llama", 32, 32),
        ("llama2-7b", "llama", 32, 32),
        ("qwen2.5-14b", "qwen2", 40, 8),
    ],
)
def test_smoke_base_is_the_family_at_its_shape_ratios(name, family, heads, kv_heads):
    _, smoke = _paper(REPO / "configs" / "paper" / f"{name}.yaml")
    p = resolve_stage(smoke, f"{name}-smoke", "base")["pretrain"]
    assert (p["family"], p["num_heads"], p["num_kv_heads"]) == (family, heads, kv_heads)
    assert p["hidden_size"] == 2 * heads  # head size 2: hidden / head_dim = the head count
    real_ratio = {"llama": 11008 / 4096, "qwen2": 13824 / 5120}[family]
    assert p["intermediate_size"] / p["hidden_size"] == pytest.approx(real_ratio, abs=0.02)
    assert p["tie_embeddings"] is False
    # deep enough for the predictor's K and the D-LLM's dynamic layers, shallow for a CPU
    assert p["num_layers"] == 8


def test_vicuna_and_llama2_smoke_to_the_same_experiment():
    """The two differ only in their weights, which smoke mode does not use."""
    configs = [
        smoke_config(load_yaml(REPO / "configs" / "paper" / f"{n}.yaml"))
        for n in ("vicuna-7b", "llama2-7b")
    ]
    stripped = [{k: v for k, v in c.items() if k != "models"} for c in configs]
    assert stripped[0] == stripped[1]
    bases = [next(iter(c["models"].values()))["base"] for c in configs]
    assert bases[0] == bases[1]


def test_smoke_config_is_pure_and_idempotent():
    raw = load_yaml(PAPER_CONFIGS[0])
    before = copy.deepcopy(raw)
    once = smoke_config(raw)
    assert raw == before
    assert validate_config(smoke_config(once)) == validate_config(once)


def test_a_deep_predictor_gets_a_deeper_smoke_model():
    raw = load_yaml(PAPER_CONFIGS[0])
    raw["predictor"]["layer_k"] = 9
    smoke = smoke_config(raw)
    (model,) = smoke["models"]
    assert resolve_stage(smoke, model, "base")["pretrain"]["num_layers"] == 11


def test_the_embedded_default_smokes_too():
    smoke = validate_config(smoke_config(load_yaml(REPO / "config.yaml")))
    base = resolve_stage(smoke, "tiny-smoke", "base")
    assert base["pretrain"]["family"] == "llama" and base["pretrain"]["steps"] == 12


def test_an_unknown_hub_model_is_named():
    raw = load_yaml(PAPER_CONFIGS[0])
    (model,) = raw["models"]
    raw["models"][model]["base"]["hub_id"] = "someone/unknown-7b"
    with pytest.raises(ConfigError, match=f"models.{model}.base.hub_id.*someone/unknown-7b"):
        smoke_config(raw)


def test_a_local_model_directory_gives_its_shape(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,'
        ' "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": true}'
    )
    raw = {"models": {"m": {"base": {"source": "hf", "path": str(tmp_path)}}}}
    p = resolve_stage(smoke_config(raw), "m-smoke", "base")["pretrain"]
    assert (p["family"], p["num_heads"], p["num_kv_heads"], p["tie_embeddings"]) == (
        "qwen2",
        14,
        2,
        True,
    )


@pytest.mark.parametrize(
    "given, read", [("true", True), ("True", True), ("false", False), (True, True), ("yes", "yes")]
)
def test_the_command_line_flag_becomes_a_boolean(given, read):
    config = {"smoke": given}
    parse_smoke_flag(config)
    assert config["smoke"] == read


def test_a_qwen2_family_model_has_qkv_biases_and_untied_embeddings():
    from transformers import Qwen2ForCausalLM

    from spadec.base.architecture import build_model
    from spadec.base.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["a small corpus of text"] * 4, 300)
    shape = {
        "family": "qwen2",
        "hidden_size": 80,
        "intermediate_size": 216,
        "num_layers": 2,
        "num_heads": 40,
        "num_kv_heads": 8,
        "max_position_embeddings": 256,
        "tie_embeddings": False,
    }
    model = build_model(shape, tokenizer)
    assert isinstance(model, Qwen2ForCausalLM)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.config.num_key_value_heads == 8 and attn.head_dim == 2


def test_pretrain_tokenizer_takes_the_configured_chat_template(tmp_path):
    from spadec.base.pretrain import load_or_train_tokenizer
    from spadec.base.templates import ALPACA

    settings = {"chat_template": "alpaca", "pretrain": {"vocab_size": 300}}
    docs = [{"text": "some documentation text"}] * 4
    dialogues = [{"instruction": "What is it?", "response": "A test."}] * 4
    tok = load_or_train_tokenizer(settings, tmp_path, docs, dialogues)
    assert tok.chat_template == ALPACA
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "### Instruction:\nHi" in text
