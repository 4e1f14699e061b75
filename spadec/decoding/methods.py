"""The decoding methods of the paper's tables, behind one call.

ar           dense target, one token per forward (the 1.0x baseline)
dllm         D-LLM target, one token per forward, real layer skipping
eagle2       EAGLE-2 tree drafted by the dense target's head, dense verification
eagle2_dllm  EAGLE-2 tree drafted by the D-LLM target's head, D-LLM verification
             (a layer runs if any verified token wants it)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from spadec.decoding.autoregressive import DecodeResult, greedy_decode
from spadec.decoding.draft import TreeParams
from spadec.decoding.eagle2 import eagle2_decode, verify_all_layers
from spadec.decoding.spadec import spadec_verify_step
from spadec.decoding.targets import load_target
from spadec.dllm.inference import dllm_decode
from spadec.eagle.head import EagleHead, load_head
from spadec.predictor.model import AcceptancePredictor, load_predictor

METHODS = ("ar", "dllm", "eagle2", "eagle2_dllm", "spadec_eagle2")
# `spadec_eagle2` uses the configured ATS mode; these name a mode explicitly.
VARIANTS = {"spadec_eagle2_prune": "prune", "spadec_eagle2_steer": "steer"}


def base_method(method: str) -> str:
    return "spadec_eagle2" if method in VARIANTS else method


NEEDS = {  # method -> (target, head) it needs
    "ar": ("dense", None),
    "dllm": ("dllm", None),
    "eagle2": ("dense", "dense"),
    "eagle2_dllm": ("dllm", "dllm"),
    "spadec_eagle2": ("dllm", "dllm"),
}


@dataclass
class Models:
    """What the methods run on; a method whose model is None is unavailable."""

    dense: torch.nn.Module | None = None
    dllm: torch.nn.Module | None = None
    head_dense: EagleHead | None = None
    head_dllm: EagleHead | None = None
    predictor: AcceptancePredictor | None = None
    ats_mode: str = "prune"
    acc_length: int = 3
    tokenizer: object = None

    def target(self, name: str):
        return self.dense if name == "dense" else self.dllm

    def head(self, name: str):
        return self.head_dense if name == "dense" else self.head_dllm

    @classmethod
    def load(
        cls,
        methods: list[str],
        base: str | Path | None,
        dllm: str | Path | None,
        head_dense: str | Path | None,
        head_dllm: str | Path | None,
        dtype: str = "float32",
        device=None,
        predictor: str | Path | None = None,
        ats_mode: str = "prune",
        acc_length: int = 3,
    ) -> Models:
        """Load what `methods` need; a missing path for a needed model is an error."""
        unknown = sorted(set(methods) - set(METHODS) - set(VARIANTS))
        if unknown:
            known = ", ".join([*METHODS, *VARIANTS])
            raise ValueError(f"unknown method(s) {unknown} (known: {known})")
        methods = [base_method(m) for m in methods]
        paths = {
            "dense": base,
            "dllm": dllm,
            "head_dense": head_dense,
            "head_dllm": head_dllm,
            "predictor": predictor,
        }
        needed = set()
        for m in methods:
            target, head = NEEDS[m]
            needed.add(target)
            if head:
                needed.add(f"head_{head}")
            if m == "spadec_eagle2":
                needed.add("predictor")
        missing = sorted(k for k in needed if not paths[k])
        if missing:
            raise ValueError(f"methods {methods} need a path for: {', '.join(missing)}")
        models = cls(ats_mode=ats_mode, acc_length=acc_length)
        for name in ("dense", "dllm"):
            if name in needed:
                model, tok = load_target(paths[name], dtype, device)
                setattr(models, name, model)
                models.tokenizer = models.tokenizer or tok
        for name in ("head_dense", "head_dllm"):
            if name in needed:
                target = models.target(name.removeprefix("head_"))
                dev = next(target.parameters()).device
                setattr(models, name, load_head(paths[name], target.dtype, dev))
        if "predictor" in needed:
            dev = next(models.dllm.parameters()).device
            models.predictor = load_predictor(paths["predictor"], dev)
        return models


def run_method(
    method: str,
    models: Models,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: TreeParams,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    target_name, head_name = NEEDS[base_method(method)]
    target = models.target(target_name)
    if method == "ar":
        return greedy_decode(
            target, input_ids, max_new_tokens, eos_token_id, temperature, generator
        )
    if method == "dllm":
        return dllm_decode(target, input_ids, max_new_tokens, eos_token_id, temperature, generator)
    verify = verify_all_layers
    if base_method(method) == "spadec_eagle2":
        mode = VARIANTS.get(method, models.ats_mode)
        verify = spadec_verify_step(models.predictor, mode, models.acc_length)
    return eagle2_decode(
        target,
        models.head(head_name),
        input_ids,
        params,
        max_new_tokens,
        eos_token_id,
        temperature,
        generator,
        verify_step=verify,
    )
