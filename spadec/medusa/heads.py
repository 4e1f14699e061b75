"""Medusa draft heads: K heads on the target's final-norm features f_t.

    head i:  h_i = Block_n(...Block_1(f_t))      Block(x) = x + SiLU(Linear(x))
             logits_i = P_i h_i      (Medusa-1: P_i its own projection, d -> V, no bias)
             logits_i = W_lm h_i     (Medusa-2 format: the target's frozen LM head)

The target's own LM head predicts x_{t+1} from f_t; head i (from 0) predicts x_{t+2+i}.
Each block's Linear starts at zero (weight and bias), so a fresh block is the identity;
a Medusa-1 projection starts as a copy of the target's LM head, so a fresh head predicts
what the LM head predicts. Tensor names follow the published `medusa_lm_head` files:
`{h}.{b}.linear.weight` / `{h}.{b}.linear.bias` for block b of head h and
`{h}.{num_blocks}.weight` for its projection (absent in the Medusa-2 format). A heads
directory holds `config.json` and `model.safetensors`; imported heads
(spadec.medusa.importer) are written in the same format and read by the same loader.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from spadec.artefacts import (
    ArtefactError,
    check_matches,
    first_line,
    load_safetensors,
    read_config_json,
)
from spadec.io import atomic_dir, write_json

HEADS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE = "MedusaHeads"


class MedusaError(ArtefactError):
    """Medusa heads that cannot be used (missing file, bad config, wrong shapes); one line
    naming the file."""


@dataclass(frozen=True)
class MedusaConfig:
    num_heads: int
    num_blocks: int
    hidden_size: int
    vocab_size: int
    own_projection: bool = True

    def __post_init__(self):
        for key in ("num_heads", "num_blocks", "hidden_size", "vocab_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{key} must be an integer, got {value!r}")
        if not isinstance(self.own_projection, bool):
            raise ValueError(f"own_projection must be true or false, got {self.own_projection!r}")
        if self.num_heads < 1 or self.hidden_size < 1 or self.vocab_size < 1:
            raise ValueError("num_heads, hidden_size and vocab_size must be at least 1")
        # A head with neither blocks nor a projection of its own is the LM head itself.
        if self.num_blocks < (0 if self.own_projection else 1):
            raise ValueError(
                f"num_blocks {self.num_blocks}: at least "
                f"{0 if self.own_projection else 1} with own_projection {self.own_projection}"
            )

    @property
    def format(self) -> str:
        """'medusa-1' (a projection per head) or 'medusa-2' (the target's LM head)."""
        return "medusa-1" if self.own_projection else "medusa-2"

    def to_dict(self) -> dict:
        return {"architecture": ARCHITECTURE, **asdict(self)}

    @classmethod
    def from_dict(cls, fields: dict) -> MedusaConfig:
        fields = dict(fields)
        arch = fields.pop("architecture", ARCHITECTURE)
        if arch != ARCHITECTURE:
            raise ValueError(f"architecture {arch!r} is not {ARCHITECTURE}")
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        return cls(**fields)


class ResBlock(nn.Module):
    """x + SiLU(Linear(x)); the Linear starts at zero, so a fresh block is the identity."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """K Medusa heads; child `str(h)` is head h (an nn.Sequential of its blocks, then its
    projection), so the state dict's names are the published ones."""

    def __init__(self, config: MedusaConfig):
        super().__init__()
        self.config = config
        d, n = config.hidden_size, config.num_blocks
        for h in range(config.num_heads):
            layers: list[nn.Module] = [ResBlock(d) for _ in range(n)]
            if config.own_projection:
                layers.append(nn.Linear(d, config.vocab_size, bias=False))
            self.add_module(str(h), nn.Sequential(*layers))

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    def head(self, i: int) -> nn.Sequential:
        return self.get_submodule(str(i))

    def blocks(self, i: int) -> nn.Sequential:
        """Head i's residual blocks (without its projection)."""
        return self.head(i)[: self.config.num_blocks]

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        """Every head's block output, [K, ..., d], for features [..., d]."""
        return torch.stack([self.blocks(i)(features) for i in range(self.num_heads)])

    def forward(self, features: torch.Tensor, lm_head=None) -> torch.Tensor:
        """Logits [K, ..., V] of the K heads for features [..., d].

        `lm_head` is the target's LM head (an nn.Module, or its weight [V, d]): required
        by Medusa-2-format heads (own_projection false), which project through it;
        heads with their own projection ignore it. Features are cast to the heads' dtype
        (and the blocks' output to the LM head's), so heads loaded in another dtype than
        the target's still draft.
        """
        features = features.to(self.dtype)
        if self.config.own_projection:
            return torch.stack([self.head(i)(features) for i in range(self.num_heads)])
        if lm_head is None:
            raise ValueError("these Medusa heads have no projection: pass the target's lm_head")
        hidden = self.hidden(features)
        if isinstance(lm_head, torch.Tensor):
            return F.linear(hidden.to(lm_head.dtype), lm_head)
        weight = getattr(lm_head, "weight", None)
        return lm_head(hidden if weight is None else hidden.to(weight.dtype))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def init_heads(config: MedusaConfig, lm_head_weight: torch.Tensor | None = None) -> MedusaHeads:
    """Fresh heads; a Medusa-1 projection starts as a copy of `lm_head_weight` [V, d]."""
    heads = MedusaHeads(config)
    if config.own_projection:
        if lm_head_weight is None:
            raise ValueError("Medusa-1 heads start from the target's LM head: pass its weight")
        expected = (config.vocab_size, config.hidden_size)
        if tuple(lm_head_weight.shape) != expected:
            raise ValueError(f"LM head weight {tuple(lm_head_weight.shape)}, expected {expected}")
        with torch.no_grad():
            for i in range(config.num_heads):
                heads.head(i)[-1].weight.copy_(lm_head_weight)
    return heads


def new_heads(
    target, num_heads: int = 5, num_blocks: int = 1, own_projection: bool = True
) -> MedusaHeads:
    """Fresh heads for `target` (a causal LM), Medusa-1 projections copied from its LM head."""
    weight = target.get_output_embeddings().weight.detach()
    config = MedusaConfig(
        num_heads=num_heads,
        num_blocks=num_blocks,
        hidden_size=target.config.hidden_size,
        vocab_size=weight.shape[0],
        own_projection=own_projection,
    )
    return init_heads(config, weight.float()).to(weight.device)


def heads_state(heads: MedusaHeads) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in heads.state_dict().items()}


def write_heads(
    config: MedusaConfig, state: dict[str, torch.Tensor], out_dir, extra_files=None
) -> None:
    """config.json + model.safetensors (+ JSON files named in `extra_files`), atomically."""
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / CONFIG_FILE, config.to_dict())
        save_file(state, tmp / HEADS_FILE)
        for name, obj in (extra_files or {}).items():
            write_json(tmp / name, obj)


def save_heads(heads: MedusaHeads, out_dir: str | Path, extra_files: dict | None = None) -> None:
    """config.json + model.safetensors (+ JSON files named in `extra_files`), atomically."""
    write_heads(heads.config, heads_state(heads), out_dir, extra_files)


def read_heads_config(heads_dir: str | Path) -> MedusaConfig:
    path = Path(heads_dir) / CONFIG_FILE
    fields = read_config_json(path)
    try:
        return MedusaConfig.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise MedusaError(f"{path}: not a Medusa heads config ({first_line(err)})") from None


def load_heads(heads_dir: str | Path, dtype=torch.float32, device="cpu") -> MedusaHeads:
    """Read a heads directory (ours, or one written by spadec.medusa.importer)."""
    heads_dir = Path(heads_dir)
    for name in (CONFIG_FILE, HEADS_FILE):
        if not (heads_dir / name).is_file():
            raise MedusaError(f"{heads_dir / name}: file not found (Medusa heads directory)")
    config = read_heads_config(heads_dir)
    weights = heads_dir / HEADS_FILE
    state = load_safetensors(weights)
    heads = MedusaHeads(config)
    expected = heads.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MedusaError(
            f"{weights}: tensors do not match {heads_dir / CONFIG_FILE} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise MedusaError(
                f"{weights}: {name} has shape {tuple(tensor.shape)}, the config needs "
                f"{tuple(expected[name].shape)}"
            )
        if not tensor.is_floating_point():
            raise MedusaError(f"{weights}: {name} is {tensor.dtype}, not a float tensor")
    heads.load_state_dict(state)
    return heads.to(device=device, dtype=dtype).eval()


def check_heads_fit(heads: MedusaHeads, heads_dir, target, target_dir) -> None:
    """Heads draft from the target's features (and, in the Medusa-2 format, through its LM
    head): their hidden size and vocabulary must be the target's (named when not)."""
    for what, key in (("Medusa hidden size", "hidden_size"), ("Medusa vocabulary", "vocab_size")):
        ours, theirs = getattr(heads.config, key), getattr(target.config, key)
        check_matches(what, heads_dir, ours, theirs, target_dir)
