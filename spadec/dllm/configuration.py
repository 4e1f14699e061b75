"""Configs of D-LLM models: a base architecture's config plus the router settings."""

from __future__ import annotations

from transformers import LlamaConfig, Qwen2Config

ROUTER_DEFAULTS = {
    "router_hidden": 512,  # width r of Linear(d -> r) -> RMSNorm -> SiLU -> Linear(r -> 2)
    "router_input_bits": 4,  # asymmetric per-token quantisation of the router input; None = off
    "dynamic_start_layer": 2,  # layers below it always run and own no router
    "reserve_initials": 2,  # positions below it run every layer (every query keeps a key)
    "target_share": 0.5,  # executed-layer share the training loss aims at
}


class _RouterConfigMixin:
    def _set_router_fields(self, kwargs: dict) -> dict:
        for key, default in ROUTER_DEFAULTS.items():
            setattr(self, key, kwargs.pop(key, default))
        return kwargs

    def check_router_fields(self) -> None:
        if not 0 <= self.dynamic_start_layer <= self.num_hidden_layers:
            raise ValueError(
                f"dynamic_start_layer {self.dynamic_start_layer} outside "
                f"[0, {self.num_hidden_layers}]"
            )
        if self.router_input_bits not in (None, 2, 4, 8):
            raise ValueError(
                f"router_input_bits must be 2, 4, 8 or None, got {self.router_input_bits}"
            )
        if self.reserve_initials < 1:
            raise ValueError("reserve_initials must be >= 1: position 0 must run every layer")

    def dynamic_layers(self) -> range:
        return range(self.dynamic_start_layer, self.num_hidden_layers)


class DLLMLlamaConfig(_RouterConfigMixin, LlamaConfig):
    """Llama family (incl. grouped-query attention, e.g. SmolLM2) with D-LLM routers."""

    model_type = "spadec_dllm_llama"

    def __init__(self, **kwargs):
        super().__init__(**self._set_router_fields(kwargs))


class DLLMQwen2Config(_RouterConfigMixin, Qwen2Config):
    """Qwen2 / Qwen2.5 with D-LLM routers."""

    model_type = "spadec_dllm_qwen2"

    def __init__(self, **kwargs):
        super().__init__(**self._set_router_fields(kwargs))
