"""The decoding methods of the paper's tables, behind one call. What each runs on, how it
drafts and how it verifies is declared in `spadec.decoding.catalog`; this module maps those
declarations to code: a loader and a decoder per drafter kind (`DRAFTERS`), a verify step
per verify kind (`VERIFY_STEPS`), the peers' decoders.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spadec.decoding import catalog
from spadec.decoding.accept import accept_lossless, accept_typical
from spadec.decoding.ats import DEFAULT_ACC_LENGTH, DEFAULT_PRUNE_SCALE
from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.catalog import (
    TARGETS,
    drafter_key,
    method_info,
    needs,
    predictor_key,
    resolve_target,
    separate_baseline,
)
from spadec.decoding.context import check_prompt_fits, context_length
from spadec.decoding.defaults import MEDUSA_DECODE_DEFAULTS
from spadec.decoding.draft import DraftLMHead, TreeParams
from spadec.decoding.eagle2 import eagle2_decode
from spadec.decoding.medusa import medusa_decode
from spadec.decoding.medusa_trees import named_tree
from spadec.decoding.peers import PROMPT_LOOKUP_TOKENS, hf_generate_decode
from spadec.decoding.spadec import spadec_verify_step
from spadec.decoding.verify import verify_all_layers
from spadec.eagle.head import EagleHead, check_head_fits, load_head
from spadec.eagle.vocab import draft_token_ids, load_token_counts
from spadec.medusa.heads import MedusaHeads, check_heads_fit, load_heads
from spadec.predictor.model import AcceptancePredictor, check_predictor_fits, load_predictor
from spadec.runtime.load import load_target
from spadec.runtime.sampling import DecodeResult


@dataclass
class Models:
    """What the methods run on, by target name (`catalog.TARGETS`). Without a separate
    baseline D-LLM, `dllm_baseline` resolves to `dllm`."""

    targets: dict[str, torch.nn.Module] = field(default_factory=dict)
    heads: dict[str, EagleHead] = field(default_factory=dict)  # EAGLE heads, by target
    predictors: dict[str, AcceptancePredictor] = field(default_factory=dict)  # by artefact key
    separate_baseline: bool = False
    ats_mode: str = "prune"
    acc_length: int = DEFAULT_ACC_LENGTH
    prune_scale: float = DEFAULT_PRUNE_SCALE
    # eagle.decode.draft_vocab: EAGLE drafting over that many tokens (None: the full LM head)
    draft_vocab: int | None = None
    draft_lm_heads: dict[str, DraftLMHead] = field(default_factory=dict)  # by target
    tokenizer: object = None
    medusa: dict[str, MedusaHeads] = field(default_factory=dict)  # Medusa heads, by target
    # medusa.decode settings: the tree, the acceptance rule
    medusa_decode: dict = field(default_factory=lambda: dict(MEDUSA_DECODE_DEFAULTS))

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
        prune_scale: float = DEFAULT_PRUNE_SCALE,
        draft_vocab: int | None = None,
        medusa_decode: dict | None = None,
    ) -> Models:
        """Load what `methods` need (`catalog.needs`). `paths` maps artefact keys (target
        names dense, dllm, dllm_baseline; a drafter's `head_<target>`; `predictor`) to
        directories; a missing or equal `dllm_baseline` means the run has one D-LLM. A
        missing path for a needed model is an error."""
        for m in methods:
            method_info(m)  # unknown names fail here, listing the known ones
        models = cls(
            separate_baseline=separate_baseline(paths),
            ats_mode=ats_mode,
            acc_length=acc_length,
            prune_scale=prune_scale,
            draft_vocab=draft_vocab,
        )
        models.medusa_decode.update(medusa_decode or {})
        needed = needs(methods, models.separate_baseline)
        missing = [k for k in needed if not paths.get(k)]
        if missing:
            raise ValueError(f"methods {methods} need a path for: {', '.join(missing)}")
        for name in (k for k in needed if k in TARGETS):
            model, tok = load_target(paths[name], dtype, device)
            models.targets[name] = model
            models.tokenizer = models.tokenizer or tok
        for kind, drafter in DRAFTERS.items():
            for target in TARGETS:
                key = drafter_key(kind, target)
                if key in needed:
                    drafter.load(models, target, paths[key], paths[target])
        for m in methods:
            key = predictor_key(m)
            if key is None or key in models.predictors:
                continue
            predictor = load_predictor(paths[key], models.device)
            target = models.target_of(m)
            check_predictor_fits(predictor, paths[key], models.targets[target], paths[target])
            models.predictors[key] = predictor
        return models

    def check_prompt(
        self, method: str, prompt_tokens: int, max_new_tokens: int, params: TreeParams
    ) -> None:
        """Refuse (PromptTooLongError) a prompt that would run `method`'s target past its
        context; a tree method also needs room for its deepest draft."""
        info = method_info(method)
        ours = DRAFTERS.get(info.drafter) if not info.peer else None
        tree_room = ours.room(self, params) if ours else 0
        context = context_length(self.target(info.target))
        check_prompt_fits(prompt_tokens, max_new_tokens, context, tree_room)


@dataclass(frozen=True)
class DrafterKind:
    """The code of a drafter kind of the catalog (`catalog.DRAFTERS`)."""

    # (models, target name, artefact dir, target dir): load the drafter into `models`
    load: Callable[[Models, str, str | Path, str | Path], None]
    # (models, target name, target, input_ids, params, *loop arguments) -> DecodeResult
    decode: Callable[..., DecodeResult]
    # (models, EAGLE tree params) -> draft positions beyond the generated tokens
    room: Callable[[Models, TreeParams], int]


def _load_eagle(models: Models, target: str, path, target_path) -> None:
    model = models.targets[target]
    head = load_head(path, model.dtype, next(model.parameters()).device)
    check_head_fits(head, path, model, target_path)
    models.heads[target] = head
    if models.draft_vocab is not None:
        ids = draft_token_ids(load_token_counts(path), models.draft_vocab, path)
        models.draft_lm_heads[target] = DraftLMHead(model.lm_head, ids)


def _decode_eagle(models: Models, target: str, model, input_ids, params, *args, **kwargs):
    draft_lm_head = models.draft_lm_heads.get(models.resolve(target))
    return eagle2_decode(
        model, models.head(target), input_ids, params, *args, draft_lm_head=draft_lm_head, **kwargs
    )


def _load_medusa(models: Models, target: str, path, target_path) -> None:
    model = models.targets[target]
    heads = load_heads(path, model.dtype, next(model.parameters()).device)
    check_heads_fit(heads, path, model, target_path)
    models.medusa[target] = heads


def _medusa_acceptance(settings: dict):
    if settings["acceptance"] == "typical":
        return accept_typical(settings["typical_threshold"], settings["typical_alpha"])
    return accept_lossless


def _decode_medusa(models: Models, target: str, model, input_ids, params, *args, **kwargs):
    settings = models.medusa_decode
    heads = models.medusa[models.resolve(target)]
    acceptance = _medusa_acceptance(settings)
    tree = named_tree(settings["tree"])
    result = medusa_decode(model, heads, input_ids, tree, *args, acceptance=acceptance, **kwargs)
    result.extra.update(medusa_tree=settings["tree"], acceptance=settings["acceptance"])
    return result


def _medusa_room(models: Models, params: TreeParams) -> int:
    return max(len(choice) for choice in named_tree(models.medusa_decode["tree"]))


# our drafter kinds (a peer's drafting is its own: PEER_DRAFT)
DRAFTERS = {
    "eagle": DrafterKind(_load_eagle, _decode_eagle, lambda models, params: params.depth),
    "medusa": DrafterKind(_load_medusa, _decode_medusa, _medusa_room),
}
# verify kind -> (models, method, ATS mode) -> the verify step
VERIFY_STEPS: dict[str, Callable] = {
    "all": lambda models, method, mode: verify_all_layers,
    "spadec": lambda models, method, mode: spadec_verify_step(
        models.predictors[predictor_key(method)], mode, models.acc_length, models.prune_scale
    ),
}
# a peer's drafter kind -> transformers' prompt_lookup_num_tokens (None: plain generate)
PEER_DRAFT = {None: None, "prompt_lookup": PROMPT_LOOKUP_TOKENS}


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
    if info.peer:
        lookup = PEER_DRAFT[info.drafter]
        return hf_generate_decode(
            target, input_ids, max_new_tokens, eos_token_id, temperature, lookup, generator
        )
    if info.plain:
        return autoregressive_decode(
            target, input_ids, max_new_tokens, eos_token_id, temperature, generator
        )
    mode = catalog.ats_mode(method, models.ats_mode)
    result = DRAFTERS[info.drafter].decode(
        models,
        models.resolve(info.target),
        target,
        input_ids,
        params,
        max_new_tokens,
        eos_token_id,
        temperature,
        generator,
        verify_step=VERIFY_STEPS[info.verify](models, method, mode),
        step_timing=step_timing,
        sync_timing=sync_timing,
    )
    if mode is not None:
        result.extra["ats_mode"] = mode
    return result
