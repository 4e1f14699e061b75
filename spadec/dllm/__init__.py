"""D-LLM: dynamic layer skipping models (routers, cache, decoding, training)."""

from __future__ import annotations


def register() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` resolve the D-LLM model types."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from spadec.dllm.configuration import DLLMLlamaConfig, DLLMQwen2Config
    from spadec.dllm.modeling import DLLMLlamaForCausalLM, DLLMQwen2ForCausalLM

    for config_cls, model_cls in (
        (DLLMLlamaConfig, DLLMLlamaForCausalLM),
        (DLLMQwen2Config, DLLMQwen2ForCausalLM),
    ):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
