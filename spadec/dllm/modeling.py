"""D-LLM models: a Llama / Qwen2 whose dynamic layers let each token skip them.

The weights are the base architecture's (same names, so a base checkpoint loads as is)
plus `model.layers.{i}.router.*` for every dynamic layer. The forward pass is ours: a
layer's output for token t is `w_t * layer(x)_t + (1 - w_t) * x_t` with the router's
decision w_t, and the keys/values of tokens that skip a layer are invisible to every
query at that layer (the eviction rule).

- `forward` runs whole sequences (training, scoring): every token is computed, skipped
  tokens are masked. In training, decisions are hard Gumbel samples with straight-through
  gradients; in eval mode they are deterministic. Eviction is a mask in both.
- `spadec.runtime.forward` decodes with a per-layer cache and really skips: a skipped
  layer costs its router only. Both give the same logits (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers import LlamaForCausalLM, Qwen2ForCausalLM
from transformers.modeling_outputs import ModelOutput

from spadec.dllm.configuration import DLLMLlamaConfig, DLLMQwen2Config
from spadec.dllm.router import Router, gumbel_decision, hard_decision
from spadec.runtime.attention import blocked_value, causal_mask, decoder_layer, gated_mix


@dataclass
class DLLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    gates: torch.Tensor | None = None  # [B, L, num_layers], 1 = executed (static layers: 1)
    features: torch.Tensor | None = None  # [B, L, d] final-norm output (what feeds lm_head)


def evicting_mask(additive_mask: torch.Tensor, key_keep: torch.Tensor | None) -> torch.Tensor:
    """The attention mask of a dynamic layer over whole sequences: `additive_mask`
    [B or 1, 1, L, L] (causality, padding) with the keys of tokens that skip the layer
    (key_keep [B, L] == 0) blocked, exactly what dropping them from a cache does.

    No gradient flows through the eviction mask: the routers learn through the gated
    residual mix and the sparsity loss. (The published code also differentiated through a
    renormalised eviction, P * w / sum(P * w); its 1/sum factor made the router gradient
    ~10^5 times larger than the sparsity loss's on the tiny model, measured, so no
    sparsity pressure could act.)
    """
    if key_keep is None:
        return additive_mask
    evicted = key_keep.detach()[:, None, None, :] == 0
    return additive_mask.masked_fill(evicted, blocked_value(additive_mask.dtype))


class DLLMMixin:
    """Routers and the gated forward pass, shared by the Llama and Qwen2 variants."""

    def _add_routers(self) -> None:
        cfg = self.config
        cfg.check_router_fields()
        for i in cfg.dynamic_layers():
            self.model.layers[i].router = Router(
                cfg.hidden_size, cfg.router_hidden, cfg.router_input_bits, cfg.rms_norm_eps
            )

    def _reset_routers(self) -> None:
        # After post_init: its generic init would overwrite the routers' execute-first bias.
        for i in self.config.dynamic_layers():
            self.model.layers[i].router.reset_parameters()

    def is_dynamic(self, layer_idx: int) -> bool:
        return layer_idx >= self.config.dynamic_start_layer

    def gate(
        self,
        layer_idx: int,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        force_execute: bool = False,
        router_noise: float = 1.0,
    ) -> torch.Tensor:
        """Decisions w in {0, 1} for every token ([B, L], float): 1 executes the layer.
        In training they are Gumbel samples with the noise scaled by `router_noise`."""
        if force_execute or not self.is_dynamic(layer_idx):
            return torch.ones(hidden.shape[:2], device=hidden.device)
        logits = self.model.layers[layer_idx].router(hidden)
        train = self.training
        w = gumbel_decision(logits, noise=router_noise) if train else hard_decision(logits)
        reserved = position_ids < self.config.reserve_initials
        return torch.where(reserved, torch.ones_like(w), w)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        labels=None,
        force_execute: bool = False,
        router_noise: float = 1.0,
        **kwargs,
    ) -> DLLMOutput:
        """Whole sequences, no cache (training, scoring). `force_execute` runs every layer;
        `router_noise` scales the training decisions' Gumbel noise (spadec.dllm.router)."""
        bsz, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device)[None].expand(bsz, -1)
        body = self.model
        hidden = body.embed_tokens(input_ids)
        cos, sin = body.rotary_emb(hidden, position_ids)
        mask = causal_mask(length, hidden.dtype, hidden.device, attention_mask)
        gates = []
        for i, layer in enumerate(body.layers):
            w = self.gate(i, hidden, position_ids, force_execute, router_noise)
            keep = None if (force_execute or not self.is_dynamic(i)) else w
            out = decoder_layer(layer, hidden, cos, sin, evicting_mask(mask, keep))
            hidden = gated_mix(w, out, hidden)
            gates.append(w)
        features = body.norm(hidden)
        logits = self.lm_head(features)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return DLLMOutput(
            loss=loss, logits=logits, gates=torch.stack(gates, dim=-1), features=features
        )


class DLLMLlamaForCausalLM(DLLMMixin, LlamaForCausalLM):
    config_class = DLLMLlamaConfig

    def __init__(self, config: DLLMLlamaConfig):
        super().__init__(config)
        self._add_routers()
        self.post_init()
        self._reset_routers()


class DLLMQwen2ForCausalLM(DLLMMixin, Qwen2ForCausalLM):
    config_class = DLLMQwen2Config

    def __init__(self, config: DLLMQwen2Config):
        super().__init__(config)
        self._add_routers()
        self.post_init()
        self._reset_routers()


def register() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` resolve the D-LLM model types."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_cls, model_cls in (
        (DLLMLlamaConfig, DLLMLlamaForCausalLM),
        (DLLMQwen2Config, DLLMQwen2ForCausalLM),
    ):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


register()
