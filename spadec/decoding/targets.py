"""Loading a target model (dense or D-LLM) and its tokenizer for decoding stages."""

from __future__ import annotations

from pathlib import Path

import torch

from spadec.base.sources import DTYPES


def default_device() -> torch.device:
    """The GPU the job was given (the launcher/scheduler sets CUDA_VISIBLE_DEVICES), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_target(path: str | Path, dtype: str = "float32", device=None):
    """(model in eval mode, tokenizer). D-LLM directories resolve through the Auto
    classes once `spadec` is imported (it registers their model types)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spadec  # noqa: F401  (registers the D-LLM model types)

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    model.to(device or default_device()).eval()
    return model, AutoTokenizer.from_pretrained(path)
