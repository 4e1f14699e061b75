"""EAGLE-2 drafting for the speculative loop: `EagleDrafter` holds the draft head, its
cache and its last output for one generation; `eagle2_decode` runs the generic loop
(`spadec.decoding.loop`) with it. Every tree method of the catalog that drafts with an
EAGLE head (`eagle2`, `eagle2_dllm`, `eagle2_dllm_robust`, `spadec_eagle2` and its ATS
variants) goes through here, on a dense or a D-LLM target.
"""

from __future__ import annotations

import torch

from spadec.decoding.draft import TreeParams, draft_tree, head_extend
from spadec.decoding.loop import speculative_decode
from spadec.decoding.tree import DraftTree
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.sampling import DecodeResult


class EagleDrafter:
    """EAGLE-2 drafting state for one generation: the head, its cache, its last output."""

    def __init__(self, head, lm_head: torch.nn.Module, params: TreeParams):
        self.head, self.lm_head, self.params = head, lm_head, params
        self.cache = LayerSkipCache.empty(1)
        self.last: torch.Tensor | None = None
        self.forwards = 0

    def observe(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Feed the target's features of newly committed tokens, each with its successor."""
        self.last = head_extend(self.head, self.cache, features, next_tokens)[-1]
        self.forwards += 1

    def draft(self, root: int) -> DraftTree:
        self.forwards += self.params.depth
        return draft_tree(self.head, self.lm_head, self.cache, self.last, root, self.params)


@torch.inference_mode()
def eagle2_decode(
    target,
    head,
    input_ids: torch.Tensor,
    params: TreeParams,
    *args,
    draft_lm_head: torch.nn.Module | None = None,
    **kwargs,
) -> DecodeResult:
    """EAGLE-2 decoding of `input_ids` [1, n] with `head` (an EagleHead) drafting for
    `target`, through `draft_lm_head` (a `DraftLMHead`: a reduced draft vocabulary) or the
    target's LM head; the remaining arguments are `speculative_decode`'s (max_new_tokens,
    eos_token_id, temperature, generator, verify_step, on_step, timing, acceptance)."""
    drafter = EagleDrafter(head, draft_lm_head or target.lm_head, params)
    return speculative_decode(target, drafter, input_ids, *args, **kwargs)
