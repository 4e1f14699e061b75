"""Smoke mode: a config's whole DAG in minutes on a CPU, offline (`--config smoke=true`).

`smoke_config(config)` returns a copy of a config for checking that the pipeline *runs*
on it (the paper configs otherwise only dry-run here).

It keeps every setting of the method: chat templates, the EAGLE tree (total_tokens /
depth / top_k), the predictor's K and ATS mode, LoRA rank, alpha and targets, the routers
(width, input bits, the baseline D-LLM), the sparsity loss (target share, constraint,
band, noise, lambda), the D-LLM's and the predictor's learning rates, the decoding
temperature and the methods compared.

It swaps
- each model's base for one trained here from scratch for a few steps (`source:
  pretrain`) of the same family (Llama, Qwen2) and shape ratios: the real head count and
  GQA ratio, intermediate / hidden and tied or untied embeddings, at head size 2 (so
  hidden = 2 x heads; larger heads for a model with few), 8 layers (more if K or the
  first dynamic layer need them), and a small byte-level BPE tokenizer trained here (no
  Llama or Qwen tokenizer ships offline);
- hub and file datasets for local ones: the standard library's docs for the SFT data,
  the held-out split for every benchmark that is not local (`project_prompts` stay);
- every count (records, prompts, tokens, epochs, steps, shards) for a small one, as in
  tests/fixtures/config.micro.yaml, GPUs for 0 and dtypes for float32 (a CPU run), and
  the EAGLE head's learning rate for micro's (so its few steps give accepted drafts);
- each model's name for `<name>-smoke`, so that every path, settings snapshot and table
  row says what it is: random weights, never paper numbers.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

from spadec.config import ConfigError, deep_merge, resolve_stage, validate_config

SMOKE_SUFFIX = "-smoke"
SMOKE_NOTE = " (smoke run: random weights, not paper numbers)"
SMOKE_LAYERS = 8
# The smallest even head size (RoPE rotates pairs of channels): the real head counts fit
# in a small width, so hidden / head_dim and the GQA ratio stay the real model's. A model
# with few heads gets larger ones, up to a width of at least MIN_SMOKE_HIDDEN.
SMOKE_HEAD_DIM = 2
MIN_SMOKE_HIDDEN = 32
# Layers a smoke model keeps after predictor.layer_k and dllm.dynamic_start_layer, so
# SpaDec's pre-run K layers and the D-LLM's dynamic layers both leave layers to run.
LAYERS_AFTER = 2


@dataclass(frozen=True)
class Architecture:
    """What a smoke model copies from the real one (besides its family): shape ratios."""

    family: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    tied_embeddings: bool


LLAMA2_7B = Architecture("llama", 4096, 11008, 32, 32, tied_embeddings=False)
# The hub models the shipped configs name, from their config.json: a smoke run needs their
# shape, not their weights, and downloads nothing.
HUB_ARCHITECTURES = {
    "lmsys/vicuna-7b-v1.5": LLAMA2_7B,
    "meta-llama/Llama-2-7b-hf": LLAMA2_7B,
    "Qwen/Qwen2.5-14B": Architecture("qwen2", 5120, 13824, 40, 8, tied_embeddings=False),
}
GGUF_ARCHITECTURES = {
    "SmolLM2-135M-Instruct.Q4_1.gguf": Architecture("llama", 576, 1536, 9, 3, True),
}
FAMILY_OF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2"}

# The counts, per stage: tests/fixtures/config.micro.yaml's, except sequences of 128
# tokens, which hold a prompt in the paper's long `alpaca` template (~50 tokens of it
# alone with this vocabulary) and most of its answer, and one data shard per job kind.
SMOKE_SCALE = {
    "data": {"heldout_fraction": 0.2, "distill_prompts": {"n": 16}},
    "base": {
        "dtype": "float32",
        "gpus": 0,
        "pretrain": {
            "vocab_size": 2048,
            "max_position_embeddings": 1024,
            "seq_len": 128,
            "batch_size": 4,
            "steps": 12,
            "warmup_steps": 2,
            "mixed_precision": "no",
            "checkpoint_every": 5,
            "log_every": 5,
        },
        "eval": {"max_ppl_tokens": 500, "decode_prompts": 2, "max_new_tokens": 8},
    },
    "dllm": {
        "gpus": 0,
        "dtype": "float32",
        "epochs": 0.1,
        "warmup_epochs": 0.025,
        "batch_size": 8,
        "max_seq_len": 128,
        "log_every": 2,
        "checkpoint_every": 4,
        "eval": {
            "max_ppl_tokens": 300,
            "max_seq_len": 128,
            "decode_prompts": 2,
            "max_new_tokens": 8,
        },
    },
    "eagle": {
        "gpus": 0,
        "train_gpus": 0,
        "dtype": "float32",
        "train_precision": "fp32",
        "distill_max_new_tokens": 12,
        "distill_batch_size": 8,
        "shards": 1,
        "data_batch_size": 8,
        "max_len": 128,
        # micro's: the paper's 5e-5 suits 20 epochs of 52,000 answers; in a few dozen
        # steps it leaves the head random, no draft is accepted, and the predictor has
        # no positive labels to learn from
        "lr": 1.0e-2,
        "epochs": 20,
        "warmup_steps": 2,
        "checkpoint_every": 2,
        "log_every": 2,
    },
    "medusa": {
        "train_gpus": 0,
        "train_precision": "fp32",
        "lr": 1.0e-2,  # micro's, for the eagle lr's reason
        "micro_batch": 4,
        "grad_accum": 1,
        "epochs": 5,
        "warmup_steps": 2,
        "max_len": 128,
        "checkpoint_every": 2,
        "log_every": 2,
    },
    "predictor": {"gpus": 0, "shards": 1, "prompts": 8, "max_new_tokens": 8, "epochs": 20},
    "eval": {"gpus": 0, "max_new_tokens": 8, "warmup_prompts": 1, "response_examples": 2},
}
SMOKE_SFT = {"source": "stdlib_docs", "max_records": 400, "max_response_chars": 200}
SMOKE_EVAL_PROMPTS = 2
LOCAL_BENCH_SOURCES = ("heldout", "project_prompts")
# Where a base model comes from, besides its architecture: none of it survives smoke mode.
BASE_SOURCE_KEYS = ("source", "path", "hub_id", "revision", "gguf")


def smoke_config(config: dict) -> dict:
    """The smoke version of a (raw or validated) config; see the module docstring."""
    # Validating a copy first names a bad key as a normal run would, and fills the
    # defaults this function reads (e.g. a benchmark list the config leaves implicit).
    full = validate_config(copy.deepcopy(config), check_paths=False)
    out = copy.deepcopy(full)
    out["smoke"] = True
    for stage, scale in SMOKE_SCALE.items():
        out[stage] = _smoke_section(stage, deep_merge(out[stage], scale))
    for key in BASE_SOURCE_KEYS:
        out["base"].pop(key, None)
    out["base"]["source"] = "pretrain"
    models = {}
    for name, overrides in full["models"].items():
        overrides = copy.deepcopy(overrides or {})
        for stage, scale in SMOKE_SCALE.items():
            if stage in overrides:
                overrides[stage] = _smoke_section(stage, deep_merge(overrides[stage], scale))
        overrides["base"] = smoke_base(full, name)
        what = overrides.get("description", name)
        overrides["description"] = what if what.endswith(SMOKE_NOTE) else what + SMOKE_NOTE
        models[smoke_name(name)] = overrides
    out["models"] = models
    return out


def parse_smoke_flag(config: dict) -> None:
    """Turn a command line's `smoke=true` / `smoke=false` into the boolean the schema
    wants, in place: Snakemake's `--config` parses only `True` and `False` as booleans, so
    `--config smoke=true` arrives as the string 'true'. Other values are left to the
    validation to name."""
    value = config.get("smoke")
    if isinstance(value, str) and value.lower() in ("true", "false"):
        config["smoke"] = value.lower() == "true"


def smoke_name(model: str) -> str:
    return model if model.endswith(SMOKE_SUFFIX) else model + SMOKE_SUFFIX


def _smoke_section(stage: str, section: dict) -> dict:
    """A stage section (top level or one model's) with its datasets made local."""
    if stage != "data":
        return section
    if "sft" in section:
        section["sft"] = dict(SMOKE_SFT)
    if "eval" in section:
        section["eval"] = {name: smoke_bench(spec) for name, spec in section["eval"].items()}
    return section


def smoke_bench(spec: dict) -> dict:
    """A benchmark kept local, a couple of prompts of it: a local one as it is, any other
    as the held-out split (single-turn, short prompts: a third of the cost of this
    repository's two-turn prompts, which `project_prompts` benchmarks still run)."""
    if spec["source"] not in LOCAL_BENCH_SOURCES:
        return {"source": "heldout", "max_prompts": SMOKE_EVAL_PROMPTS}
    return {**spec, "max_prompts": SMOKE_EVAL_PROMPTS}


def smoke_base(config: dict, model: str) -> dict:
    """A model's complete `base` section in smoke mode (a validated config)."""
    base = resolve_stage(config, model, "base")
    arch = architecture_of(base, f"models.{model}.base")
    layer_k = resolve_stage(config, model, "predictor")["layer_k"]
    dynamic_start = resolve_stage(config, model, "dllm")["dynamic_start_layer"]
    scale = SMOKE_SCALE["base"]
    return {
        "source": "pretrain",
        "chat_template": base["chat_template"],
        "dtype": scale["dtype"],
        "gpus": scale["gpus"],
        "pretrain": {
            **base["pretrain"],
            **scale["pretrain"],
            **smoke_shape(arch, smoke_depth(layer_k, dynamic_start)),
        },
        "eval": {**base["eval"], **scale["eval"]},
    }


def smoke_depth(layer_k: int, dynamic_start_layer: int) -> int:
    return max(SMOKE_LAYERS, layer_k + LAYERS_AFTER, dynamic_start_layer + LAYERS_AFTER)


def smoke_shape(arch: Architecture, layers: int) -> dict:
    """`base.pretrain` shape keys of a small model with the ratios of `arch`."""
    head_dim = max(SMOKE_HEAD_DIM, 2 * math.ceil(MIN_SMOKE_HIDDEN / arch.heads / 2))
    hidden = arch.heads * head_dim
    return {
        "family": arch.family,
        "num_layers": layers,
        "hidden_size": hidden,
        "num_heads": arch.heads,
        "num_kv_heads": arch.kv_heads,
        "intermediate_size": round(hidden * arch.intermediate / arch.hidden),
        "tie_embeddings": arch.tied_embeddings,
    }


def architecture_of(base: dict, key: str) -> Architecture:
    """The real model's architecture, without downloading it (resolved base settings)."""
    source = base["source"]
    if source == "pretrain":
        p = base["pretrain"]
        return Architecture(
            p.get("family", "llama"),
            p["hidden_size"],
            p["intermediate_size"],
            p["num_heads"],
            p["num_kv_heads"],
            p["tie_embeddings"],
        )
    if source == "gguf_package":
        arch = GGUF_ARCHITECTURES.get(base["gguf"]["file"])
        if arch is None:
            raise ConfigError(
                f"config key '{key}.gguf.file': smoke mode does not know the shape of"
                f" {base['gguf']['file']} (add it to spadec.smoke.GGUF_ARCHITECTURES)"
            )
        return arch
    if base.get("path"):
        return _architecture_from_dir(Path(base["path"]), f"{key}.path")
    arch = HUB_ARCHITECTURES.get(base.get("hub_id"))
    if arch is None:
        raise ConfigError(
            f"config key '{key}.hub_id': smoke mode does not know the shape of"
            f" {base.get('hub_id')} and downloads nothing (add it to"
            " spadec.smoke.HUB_ARCHITECTURES)"
        )
    return arch


def _architecture_from_dir(path: Path, key: str) -> Architecture:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"config key '{key}': no config.json in {path}")
    cfg = json.loads(config_file.read_text(encoding="utf-8"))
    family = FAMILY_OF_MODEL_TYPE.get(cfg.get("model_type"))
    if family is None:
        raise ConfigError(
            f"config key '{key}': smoke mode builds Llama or Qwen2 models, not"
            f" model_type '{cfg.get('model_type')}'"
        )
    return Architecture(
        family,
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_attention_heads"],
        cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        cfg.get("tie_word_embeddings", False),
    )
