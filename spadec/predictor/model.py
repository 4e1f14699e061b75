"""The acceptance predictor: logistic regression on a tree node's layer-K hidden state.

    p(node on the accepted path) = sigmoid(w . h_K + b)

h_K is the residual stream after the first K target layers (not normalised), as in the
published code. Stored as `config.json` ({hidden_size, layer_k}) + `model.safetensors`
(`linear.weight` [1, d], `linear.bias` [1]); the published `logistic_regression_model.pth`
(a state dict with the same two keys, bf16) is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spadec.io import atomic_dir, write_json

WEIGHTS = "model.safetensors"


class PredictorError(ValueError):
    """A predictor file that cannot be used (missing, wrong keys or shapes)."""


class AcceptancePredictor(nn.Module):
    def __init__(self, hidden_size: int, layer_k: int):
        super().__init__()
        self.layer_k = layer_k
        self.linear = nn.Linear(hidden_size, 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [...] (fp32 whatever the input dtype)."""
        w = self.linear.weight[0].float()
        return hidden.float() @ w + self.linear.bias.float()[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(hidden))


def save_predictor(model: AcceptancePredictor, out_dir: str | Path, extra: dict | None = None):
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS)
        write_json(
            tmp / "config.json",
            {"hidden_size": model.linear.in_features, "layer_k": model.layer_k},
        )
        for name, obj in (extra or {}).items():
            write_json(tmp / name, obj)


def _from_state(state: dict, layer_k: int, where: str) -> AcceptancePredictor:
    weight, bias = state.get("linear.weight"), state.get("linear.bias")
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[0] != 1:
        raise PredictorError(
            f"{where}: expected linear.weight [1, d] and linear.bias [1], got "
            f"{ {k: tuple(v.shape) for k, v in state.items()} }"
        )
    model = AcceptancePredictor(weight.shape[1], layer_k)
    model.load_state_dict({"linear.weight": weight.float(), "linear.bias": bias.float().view(1)})
    return model.eval()


def load_predictor(model_dir: str | Path, device="cpu") -> AcceptancePredictor:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not (model_dir / WEIGHTS).is_file():
        raise PredictorError(f"{model_dir}: a predictor needs config.json and {WEIGHTS}")
    config = json.loads((model_dir / "config.json").read_text())
    model = _from_state(load_file(model_dir / WEIGHTS), config["layer_k"], str(model_dir))
    return model.to(device)


def import_published(pth: str | Path, layer_k: int, out_dir: str | Path) -> AcceptancePredictor:
    """Convert the published predictor state dict (`.pth`) into our directory format."""
    pth = Path(pth)
    if not pth.is_file():
        raise PredictorError(f"{pth}: file not found")
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise PredictorError(f"{pth}: not a readable torch state dict ({err})") from None
    model = _from_state(dict(state), layer_k, str(pth))
    save_predictor(model, out_dir, {"imported_from.json": {"path": str(pth)}})
    return model
