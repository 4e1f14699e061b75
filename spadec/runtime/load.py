"""Loading a target model (dense or D-LLM) and its tokenizer, and the weight dtypes."""

from __future__ import annotations

from pathlib import Path

import torch

from spadec.artefacts import ArtefactError, check_safetensors, first_line, read_config_json

# the dtype names configs use for weights and stored features
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    """The GPU the job was given (the launcher/scheduler sets CUDA_VISIBLE_DEVICES), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_target(path: str | Path, dtype: str = "float32", device=None):
    """(model in eval mode, tokenizer). D-LLM directories resolve through the Auto
    classes once `spadec` is imported (it registers their model types). A directory that
    cannot be loaded (missing or corrupt config.json or weights, weights that do not fit
    the config) is an ArtefactError naming the file."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spadec  # noqa: F401  (registers the D-LLM model types)

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ArtefactError(f"{path}: not a model directory (no config.json)")
    read_config_json(path / "config.json")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        raise ArtefactError(f"{path}: cannot load the model ({first_line(err)})") from err
    # transformers initialises missing weights at random and only logs it: decoding with
    # them would look like a bad model, not a bad file.
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ArtefactError(
            f"{path}: the weights lack {len(missing)} tensor(s) the config needs "
            f"(e.g. {', '.join(missing[:3])})"
        )
    model.to(device or default_device()).eval()
    return model, tokenizer
