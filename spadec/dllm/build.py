"""Build a D-LLM model from a base model: same weights, plus freshly initialised routers."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from spadec.dllm.configuration import ROUTER_DEFAULTS, DLLMLlamaConfig, DLLMQwen2Config
from spadec.dllm.modeling import register

register()  # explicit: from_config below resolves the D-LLM types through the Auto classes

log = logging.getLogger(__name__)

# Base architectures a D-LLM variant exists for (model_type of the base -> D-LLM config).
VARIANTS = {"llama": DLLMLlamaConfig, "qwen2": DLLMQwen2Config}


def dllm_config_from(base_config, settings: dict):
    """The D-LLM config for a base config and the `dllm` stage settings."""
    base_type = base_config.model_type
    if base_type not in VARIANTS:
        raise ValueError(
            f"no D-LLM variant for model_type '{base_type}' (have: {', '.join(VARIANTS)})"
        )
    fields = base_config.to_dict()
    for key in (
        "model_type",
        "architectures",
        "transformers_version",
        "_name_or_path",
        "dtype",
        "torch_dtype",
    ):
        fields.pop(key, None)
    router = {
        "router_hidden": settings.get("router_hidden", ROUTER_DEFAULTS["router_hidden"]),
        "router_input_bits": settings.get(
            "router_input_bits", ROUTER_DEFAULTS["router_input_bits"]
        ),
        "dynamic_start_layer": settings.get(
            "dynamic_start_layer", ROUTER_DEFAULTS["dynamic_start_layer"]
        ),
        "reserve_initials": settings.get("reserve_initials", ROUTER_DEFAULTS["reserve_initials"]),
        "target_share": settings.get("target_share", ROUTER_DEFAULTS["target_share"]),
    }
    return VARIANTS[base_type](**fields, **router)


def dllm_from_base(base_dir: str | Path, settings: dict, dtype=torch.float32):
    """Load the base weights into a D-LLM model; only the routers are new."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base_config = AutoConfig.from_pretrained(base_dir)
    config = dllm_config_from(base_config, settings)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    missing = [
        k
        for k in missing
        if ".router." not in k and not (config.tie_word_embeddings and k == "lm_head.weight")
    ]
    if missing or unexpected:
        raise ValueError(
            f"base weights do not fit the D-LLM model: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    log.info(
        "D-LLM from %s: %d dynamic layers of %d, router width %d, input bits %s",
        base_dir,
        len(config.dynamic_layers()),
        config.num_hidden_layers,
        config.router_hidden,
        config.router_input_bits,
    )
    return model
