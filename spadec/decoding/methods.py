"""The decoding methods of the paper's tables, behind one call (what each runs on:
`spadec.decoding.catalog`).

ar            dense target, one token per forward (the 1.0x baseline)
dllm          baseline D-LLM, one token per forward, real layer skipping
dllm_robust   SpaDec's D-LLM (robust routers), one token per forward
eagle2        EAGLE-2 tree drafted by the dense target's head, dense verification
eagle2_dllm   EAGLE-2 on the baseline D-LLM with its own head (a layer runs if any
              verified token wants it)
eagle2_dllm_robust
              EAGLE-2 on SpaDec's D-LLM with its head, every verified token votes
              (the ablation's robust-router row without ATS)
spadec_eagle2 EAGLE-2 on SpaDec's D-LLM: pre-run K layers, predictor, ATS

peers (reference rows, `spadec.decoding.peers`):
hf_generate   transformers' `model.generate` on the dense target, greedy
hf_prompt_lookup
              the same with its prompt-lookup decoding
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from spadec.decoding.autoregressive import DecodeResult, autoregressive_decode
from spadec.decoding.catalog import (
    ATS_VARIANTS,
    TARGETS,
    base_method,
    method_info,
    resolve_target,
    separate_baseline,
)
from spadec.decoding.context import check_prompt_fits, context_length
from spadec.decoding.draft import TreeParams
from spadec.decoding.eagle2 import eagle2_decode, verify_all_layers
from spadec.decoding.peers import PROMPT_LOOKUP_TOKENS, hf_generate_decode
from spadec.decoding.spadec import spadec_verify_step
from spadec.decoding.targets import load_target
from spadec.dllm.inference import dllm_decode
from spadec.eagle.head import EagleHead, check_head_fits, load_head
from spadec.predictor.ats import DEFAULT_ACC_LENGTH
from spadec.predictor.model import AcceptancePredictor, check_predictor_fits, load_predictor


@dataclass
class Models:
    """What the methods run on, by target name (`catalog.TARGETS`). Without a separate
    baseline D-LLM, `dllm_baseline` resolves to `dllm`."""

    targets: dict[str, torch.nn.Module] = field(default_factory=dict)
    heads: dict[str, EagleHead] = field(default_factory=dict)
    predictor: AcceptancePredictor | None = None
    separate_baseline: bool = False
    ats_mode: str = "prune"
    acc_length: int = DEFAULT_ACC_LENGTH
    tokenizer: object = None

    def resolve(self, target: str) -> str:
        return resolve_target(target, self.separate_baseline)

    def target(self, name: str) -> torch.nn.Module:
        return self.targets[self.resolve(name)]

    def head(self, name: str) -> EagleHead:
        return self.heads[self.resolve(name)]

    def target_of(self, method: str) -> str:
        """The resolved target a method runs on (recorded with every run)."""
        return self.resolve(method_info(method).target)

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.targets.values())).parameters()).device

    @classmethod
    def load(
        cls,
        methods: list[str],
        paths: dict[str, str | Path | None],
        dtype: str = "float32",
        device=None,
        ats_mode: str = "prune",
        acc_length: int = DEFAULT_ACC_LENGTH,
    ) -> Models:
        """Load what `methods` need. `paths` maps target names (dense, dllm,
        dllm_baseline), `head_<target>` and `predictor` to directories; a missing or
        equal `dllm_baseline` (and its head) means the run has one D-LLM. A missing path
        for a needed model is an error."""
        for m in methods:
            method_info(m)  # unknown names fail here, listing the known ones
        models = cls(
            separate_baseline=separate_baseline(paths), ats_mode=ats_mode, acc_length=acc_length
        )
        needed = set()
        for m in methods:
            info = method_info(m)
            needed.add(models.resolve(info.target))
            if info.head:
                needed.add(f"head_{models.resolve(info.head)}")
            if base_method(m) == "spadec_eagle2":
                needed.add("predictor")
        missing = sorted(k for k in needed if not paths.get(k))
        if missing:
            raise ValueError(f"methods {methods} need a path for: {', '.join(missing)}")
        for name in sorted(needed & set(TARGETS)):
            model, tok = load_target(paths[name], dtype, device)
            models.targets[name] = model
            models.tokenizer = models.tokenizer or tok
        for name in sorted(t for t in TARGETS if f"head_{t}" in needed):
            target = models.targets[name]
            dev = next(target.parameters()).device
            head = load_head(paths[f"head_{name}"], target.dtype, dev)
            check_head_fits(head, paths[f"head_{name}"], target, paths[name])
            models.heads[name] = head
        if "predictor" in needed:
            models.predictor = load_predictor(paths["predictor"], models.device)
            spadec_target = next(
                models.resolve(method_info(m).target)
                for m in methods
                if base_method(m) == "spadec_eagle2"
            )
            check_predictor_fits(
                models.predictor,
                paths["predictor"],
                models.targets[spadec_target],
                paths[spadec_target],
            )
        return models

    def check_prompt(
        self, method: str, prompt_tokens: int, max_new_tokens: int, params: TreeParams
    ) -> None:
        """Refuse (PromptTooLongError) a prompt that would run `method`'s target past its
        context; a tree method also needs room for its deepest draft."""
        tree_room = 0 if method_info(method).head is None else params.depth
        context = context_length(self.target(method_info(method).target))
        check_prompt_fits(prompt_tokens, max_new_tokens, context, tree_room)


def run_method(
    method: str,
    models: Models,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: TreeParams,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    step_timing: bool = False,
    sync_timing: bool = False,
) -> DecodeResult:
    """Decode `input_ids` [1, n] with `method`. `step_timing` adds per-step timings to a
    tree method's result (`extra["timing"]`); `sync_timing` synchronises the device at
    each timed boundary (CUDA only: honest parts, slower loop)."""
    info = method_info(method)
    target = models.target(info.target)
    models.check_prompt(method, input_ids.shape[-1], max_new_tokens, params)
    if method == "ar":
        return autoregressive_decode(
            target, input_ids, max_new_tokens, eos_token_id, temperature, generator
        )
    if info.peer:
        lookup = PROMPT_LOOKUP_TOKENS if method == "hf_prompt_lookup" else None
        return hf_generate_decode(
            target, input_ids, max_new_tokens, eos_token_id, temperature, lookup, generator
        )
    if info.plain:
        return dllm_decode(target, input_ids, max_new_tokens, eos_token_id, temperature, generator)
    verify, mode = verify_all_layers, None
    if base_method(method) == "spadec_eagle2":
        mode = ATS_VARIANTS.get(method, models.ats_mode)
        verify = spadec_verify_step(models.predictor, mode, models.acc_length)
    result = eagle2_decode(
        target,
        models.head(info.head),
        input_ids,
        params,
        max_new_tokens,
        eos_token_id,
        temperature,
        generator,
        verify_step=verify,
        step_timing=step_timing,
        sync_timing=sync_timing,
    )
    if mode is not None:
        result.extra["ats_mode"] = mode
    return result
