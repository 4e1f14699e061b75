"""The model a `pretrain` source trains from scratch: a Llama or a Qwen2 (`base.pretrain.family`).

Both families share the shape keys of `base.pretrain`; what differs is the family's own
architecture (Qwen2: biases on q/k/v) and its published RoPE base and norm epsilon, so a
small Qwen2 trained here is the same kind of model as a Qwen2.5 checkpoint.
"""

from __future__ import annotations

# Settings a family fixes rather than the config: Llama-2's and Qwen2.5's published values.
FAMILY_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-5, "rope_theta": 10000.0},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 1000000.0},
}
# A config without `family` trains a Llama (what `pretrain` always trained).
DEFAULT_FAMILY = "llama"


def model_classes(family: str):
    """(config class, causal-LM class) of a family."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if family not in classes:
        raise ValueError(
            f"base.pretrain.family: unknown family '{family}' (one of {list(classes)})"
        )
    return classes[family]


def build_model(pretrain: dict, tokenizer):
    """A randomly initialised causal LM of the `base.pretrain` block's family and shape."""
    p = pretrain
    if p["hidden_size"] % p["num_heads"] or p["num_heads"] % p["num_kv_heads"]:
        raise ValueError(
            "base.pretrain: hidden_size must divide by num_heads, and num_heads by num_kv_heads"
        )
    family = p.get("family", DEFAULT_FAMILY)
    config_class, model_class = model_classes(family)
    cfg = config_class(
        vocab_size=len(tokenizer),
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        num_key_value_heads=p["num_kv_heads"],
        max_position_embeddings=p["max_position_embeddings"],
        tie_word_embeddings=p["tie_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **FAMILY_DEFAULTS[family],
    )
    return model_class(cfg)
