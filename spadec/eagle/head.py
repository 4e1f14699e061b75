"""The EAGLE draft head: one decoder layer over [token embedding; target feature].

    h = Layer(fc([Embed(x_{t+1}) ; f_t]))        logits = target_lm_head(h)

f_t is the target's final-norm output at position t (what feeds its LM head), x_{t+1}
the token that follows. The embedding is a frozen copy of the target's; the LM head is
the target's own and stays outside the head. The layer is a Llama layer without its
input norm (the features are normed already). Weight names follow the published EAGLE
heads (`embed_tokens`, `fc`, `layers.0.*`), stored as safetensors next to `config.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from spadec.artefacts import (
    ArtefactError,
    check_matches,
    first_line,
    load_safetensors,
    read_config_json,
)
from spadec.eagle.vocab import COUNTS_FILE, write_token_counts
from spadec.io import atomic_dir, write_json
from spadec.runtime.attention import causal_mask, decoder_layer

HEAD_FILE = "model.safetensors"
GEOMETRY = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "hidden_act",
    "rope_parameters",
    "pad_token_id",
)


class HeadError(ArtefactError):
    """A head directory that cannot be loaded (missing file, wrong shapes)."""


def head_config_for(target_config) -> LlamaConfig:
    """A one-layer Llama config with the target's geometry (Qwen2 targets included)."""
    fields = {k: getattr(target_config, k) for k in GEOMETRY if hasattr(target_config, k)}
    return LlamaConfig(**fields, num_hidden_layers=1, attention_bias=False, mlp_bias=False)


class EagleHead(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        if config.num_hidden_layers != 1:
            raise HeadError(f"an EAGLE head has one layer, config says {config.num_hidden_layers}")
        self.config = config
        d = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * d, d, bias=True)
        layer = LlamaDecoderLayer(config, layer_idx=0)
        layer.input_layernorm = nn.Identity()  # the features arrive normed
        self.layers = nn.ModuleList([layer])
        self.rotary_emb = LlamaRotaryEmbedding(config)

    @property
    def layer(self) -> LlamaDecoderLayer:
        return self.layers[0]

    def fuse(self, features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """fc([Embed(x) ; f]): the layer's input, [B, L, d]."""
        emb = self.embed_tokens(input_ids).to(features.dtype)
        return self.fc(torch.cat([emb, features], dim=-1))

    def forward(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Whole sequences (training): causal attention, padded keys blocked. -> [B, L, d]."""
        bsz, length = input_ids.shape
        x = self.fuse(features, input_ids)
        positions = torch.arange(length, device=x.device)[None].expand(bsz, -1)
        cos, sin = self.rotary_emb(x, positions)
        mask = causal_mask(length, x.dtype, x.device, attention_mask)
        return decoder_layer(self.layer, x, cos, sin, mask)


def init_head(target_config, embedding: torch.Tensor) -> EagleHead:
    """A freshly initialised head for a target of `target_config`, whose token embedding
    [V, d] it copies (and keeps frozen)."""
    head = EagleHead(head_config_for(target_config))
    with torch.no_grad():
        head.embed_tokens.weight.copy_(embedding)
    return head


def new_head(target) -> EagleHead:
    """A freshly initialised head for `target` (a causal LM), its embedding copied."""
    return init_head(target.config, target.get_input_embeddings().weight)


def save_head(
    head: EagleHead,
    out_dir: str | Path,
    extra_files: dict | None = None,
    token_counts: torch.Tensor | None = None,
) -> None:
    """config.json + model.safetensors (+ JSON files named in `extra_files`, + the answer
    token counts of the draft vocabulary, `spadec.eagle.vocab`), atomically."""
    state = {k: v.detach().cpu().clone().contiguous() for k, v in head.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.startswith("rotary_emb.")}
    with atomic_dir(out_dir) as tmp:
        head.config.save_pretrained(tmp)
        save_file(state, tmp / HEAD_FILE)
        for name, obj in (extra_files or {}).items():
            write_json(tmp / name, obj)
        if token_counts is not None:
            write_token_counts(tmp / COUNTS_FILE, token_counts)


def load_head(head_dir: str | Path, dtype=torch.float32, device="cpu") -> EagleHead:
    """Read a head directory (ours, or a published EAGLE head converted to safetensors)."""
    head_dir = Path(head_dir)
    weights = head_dir / HEAD_FILE
    if not (head_dir / "config.json").is_file() or not weights.is_file():
        raise HeadError(f"{head_dir}: an EAGLE head needs config.json and {HEAD_FILE}")
    fields = read_config_json(head_dir / "config.json")
    fields.pop("model_type", None)
    try:
        head = EagleHead(LlamaConfig(**fields))
    except (TypeError, ValueError, KeyError) as err:
        raise HeadError(
            f"{head_dir}/config.json: not an EAGLE head config ({first_line(err)})"
        ) from None
    state = load_safetensors(weights)
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor whose shape differs from the config's
        raise HeadError(f"{weights}: weights do not match the config ({first_line(err)})") from None
    missing = [k for k in missing if not k.startswith("rotary_emb.")]
    if missing or unexpected:
        raise HeadError(
            f"{weights}: weights do not match the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    head.to(device=device, dtype=dtype)
    # RoPE frequencies stay fp32, as in the targets and in training: cast to bf16 they
    # would rotate by visibly different angles at long positions and cost acceptance.
    head.rotary_emb = LlamaRotaryEmbedding(head.config).to(device)
    return head.eval()


def check_head_fits(head: EagleHead, head_dir, target, target_dir) -> None:
    """A head drafts with the target's LM head on the target's features: its hidden size
    and vocabulary must be the target's (a head of another model fails here, named)."""
    for what, key in (("head hidden size", "hidden_size"), ("head vocabulary", "vocab_size")):
        ours, theirs = getattr(head.config, key), getattr(target.config, key)
        check_matches(what, head_dir, ours, theirs, target_dir)
