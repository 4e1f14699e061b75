"""Verification steps of the speculative loop: what one target forward does with a draft
tree. `verify_all_layers` is the plain one (every tree token votes on whether a layer
runs); SpaDec's (`spadec.decoding.spadec`) splits the pass at layer K."""

from __future__ import annotations

from collections.abc import Callable

from spadec.decoding.timing import NO_TIMER, StepTimer
from spadec.decoding.tree import CompiledTree
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import TreePass, run_layers, start_pass

# (model, compiled tree, cache, *, timer) -> the pass; a step may time its own sub-parts
VerifyStep = Callable[..., TreePass]


def start_tree(model, compiled: CompiledTree, cache: LayerSkipCache) -> TreePass:
    """A pass over every node of a compiled tree (positions by depth, the tree's mask)."""
    return start_pass(model, compiled.tokens, compiled.depth, compiled.attn_bias, cache)


def verify_all_layers(
    model, compiled: CompiledTree, cache: LayerSkipCache, timer: StepTimer = NO_TIMER
) -> TreePass:
    """Plain tree verification: every layer, every token votes (eagle2, eagle2_dllm)."""
    tp = start_tree(model, compiled, cache)
    return run_layers(model, tp, cache, 0, len(model.model.layers))
