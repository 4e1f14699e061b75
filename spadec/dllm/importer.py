"""Import D-LLM checkpoints in the published formats into our HF directory.

Two inputs are understood:
- a native checkpoint folder: `consolidated.00.pth` (full state dict after the LoRA
  merge, keys `layers.{i}.self_attn.q_proj.weight`, `layers.{i}.router.linear_1.weight`,
  ...) with `model_args.json` (dim, n_layers, n_heads, norm_eps, dynamic_start_layer,
  dynamic_router_hdim, dynamic_reserve_initials, dynamic_active_target, ...), plus a
  tokenizer directory given separately;
- an HF folder written by the published converter: `config.json` with model_type
  "llama_d-llm" (architecture LlamaDLLMForCausalLM), router keys `model.layers.{i}.router.*`.
Pickled files are read with `torch.load(..., weights_only=True)`: tensors only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from spadec.dllm.configuration import DLLMLlamaConfig
from spadec.io import atomic_dir
from spadec.provenance import RunInfo
from spadec.runtime.load import DTYPES

log = logging.getLogger(__name__)


class DLLMImportError(ValueError):
    """The input is not a D-LLM checkpoint in a published format."""


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise DLLMImportError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state.get("model", state)


def _native(src: Path, router_input_bits) -> tuple[DLLMLlamaConfig, dict]:
    args = json.loads((src / "model_args.json").read_text())
    raw = _load_tensors(src / "consolidated.00.pth")
    state = {}
    for key, value in raw.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config
        state["lm_head.weight" if key == "lm_head.weight" else f"model.{key}"] = value
    need = (
        "dim",
        "n_layers",
        "n_heads",
        "norm_eps",
        "dynamic_start_layer",
        "dynamic_router_hdim",
        "dynamic_reserve_initials",
        "dynamic_active_target",
    )
    missing = [k for k in need if k not in args]
    if missing:
        raise DLLMImportError(f"{src / 'model_args.json'} lacks {missing}")
    config = DLLMLlamaConfig(
        vocab_size=state["model.embed_tokens.weight"].shape[0],
        hidden_size=args["dim"],
        intermediate_size=state["model.layers.0.mlp.gate_proj.weight"].shape[0],
        num_hidden_layers=args["n_layers"],
        num_attention_heads=args["n_heads"],
        num_key_value_heads=args.get("n_kv_heads") or args["n_heads"],
        rms_norm_eps=args["norm_eps"],
        max_position_embeddings=args.get("max_position_embeddings")
        or args.get("max_seq_len", 4096),
        rope_theta=args.get("rope_theta", 10000.0),
        router_hidden=args["dynamic_router_hdim"],
        router_input_bits=router_input_bits,
        dynamic_start_layer=args["dynamic_start_layer"],
        reserve_initials=args["dynamic_reserve_initials"],
        target_share=args["dynamic_active_target"],
        tie_word_embeddings=False,
    )
    return config, state


def _published_hf(src: Path, router_input_bits) -> tuple[DLLMLlamaConfig, dict]:
    fields = json.loads((src / "config.json").read_text())
    kind = fields.get("model_type"), (fields.get("architectures") or [None])[0]
    if "LlamaDLLMForCausalLM" not in kind and "llama_d-llm" not in kind:
        raise DLLMImportError(f"{src}: not a published D-LLM HF folder (model_type {kind[0]})")
    router = {
        "router_hidden": fields.pop("dynamic_router_hdim"),
        "dynamic_start_layer": fields.pop("dynamic_start_layer"),
        "reserve_initials": fields.pop("dynamic_reserve_initials"),
        "target_share": fields.pop("dynamic_active_target"),
        "router_input_bits": router_input_bits,
    }
    for key in (
        "model_type",
        "architectures",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "lora_rank",
        "_name_or_path",
    ):
        fields.pop(key, None)
    files = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise DLLMImportError(f"{src}: no weight files (*.safetensors or pytorch_model*.bin)")
    state = {}
    for f in files:
        state.update(_load_tensors(f))
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    return DLLMLlamaConfig(**fields, **router), state


def import_dllm(
    src: str | Path,
    out: str | Path,
    tokenizer_dir: str | Path | None = None,
    router_input_bits: int | None = 4,
    dtype: str = "float32",
) -> dict:
    """Convert a published D-LLM checkpoint into our HF directory; return a summary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spadec.dllm.modeling  # noqa: F401  (registers the Auto classes)

    src = Path(src)
    if (src / "consolidated.00.pth").is_file():
        if not (src / "model_args.json").is_file():
            raise DLLMImportError(f"{src}: consolidated.00.pth needs model_args.json beside it")
        config, state = _native(src, router_input_bits)
        tok_src = tokenizer_dir
        if tok_src is None:
            raise DLLMImportError("a native checkpoint carries no tokenizer: pass --tokenizer DIR")
    elif (src / "config.json").is_file():
        config, state = _published_hf(src, router_input_bits)
        tok_src = tokenizer_dir or src
    else:
        raise DLLMImportError(f"{src}: neither consolidated.00.pth nor config.json found")
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in state.items()}, strict=False
    )
    if missing or unexpected:
        raise DLLMImportError(
            f"{src}: weights do not match the config: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    model = model.to(DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(tok_src)
    info = {
        "source": str(src),
        "layers": config.num_hidden_layers,
        "dynamic_layers": len(config.dynamic_layers()),
        "router_input_bits": router_input_bits,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        RunInfo("import_dllm", info).write(tmp / "run_info.json")
    log.info("imported %s into %s", src, out)
    return info
