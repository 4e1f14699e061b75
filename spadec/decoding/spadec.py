"""SpaDec's verification step (method `spadec_eagle2`): pre-verify, predict, select, verify.

    1. run the first K target layers on the whole draft tree;
    2. the predictor scores every node from its layer-K hidden state;
    3. ATS selects (spadec.decoding.ats);
    4. the remaining layers run on the selection (`prune`) or on the whole tree with only
       the selected path voting on whether a layer runs (`steer`).

It plugs into the EAGLE-2 loop as its `verify_step`: drafting, acceptance and KV
compaction are the same steps, not a second copy of the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spadec.decoding.ats import DEFAULT_ACC_LENGTH, DEFAULT_PRUNE_SCALE, MODES, select
from spadec.decoding.timing import NO_TIMER, StepTimer
from spadec.decoding.tree import CompiledTree
from spadec.decoding.verify import start_tree
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import TreePass, keep_nodes, run_layers


def spadec_verify_step(
    predictor,
    mode: str,
    acc_length: int = DEFAULT_ACC_LENGTH,
    prune_scale: float = DEFAULT_PRUNE_SCALE,
) -> Callable:
    if mode not in MODES:
        raise ValueError(f"unknown ATS mode '{mode}' (one of {', '.join(MODES)})")

    def verify(
        model, compiled: CompiledTree, cache: LayerSkipCache, timer: StepTimer = NO_TIMER
    ) -> TreePass:
        num_layers = len(model.model.layers)
        k = predictor.layer_k
        if not 0 < k < num_layers:
            raise ValueError(f"predictor layer_k {k} must lie in 1..{num_layers - 1}")
        t = timer.now()
        tp = start_tree(model, compiled, cache)
        run_layers(model, tp, cache, 0, k)
        t = timer.lap("verify_first_k", t)
        probs = predictor.score_tree(tp.hidden[0], compiled)
        chosen = select(compiled, probs, acc_length, prune_scale)
        timer.lap("predictor_ats", t)
        if mode == "prune":
            keep_nodes(tp, chosen.keep)
            return run_layers(model, tp, cache, k, num_layers)
        return run_layers(model, tp, cache, k, num_layers, voters=chosen.path)

    return verify


def recording_verify_step(layer_k: int, sink: list) -> Callable:
    """Plain tree verification (every token votes) that also appends each pass's layer-K
    hidden states [T, d] to `sink` (predictor training data)."""

    def verify(
        model, compiled: CompiledTree, cache: LayerSkipCache, timer: StepTimer = NO_TIMER
    ) -> TreePass:
        tp = start_tree(model, compiled, cache)
        run_layers(model, tp, cache, 0, layer_k)
        sink.append(tp.hidden[0].detach().clone())
        return run_layers(model, tp, cache, layer_k, len(model.model.layers))

    return verify


def path_labels(num_nodes: int, path: torch.Tensor) -> torch.Tensor:
    """1 for nodes on the accepted path (the root included), else 0."""
    labels = torch.zeros(num_nodes, dtype=torch.uint8, device=path.device)
    labels[path] = 1
    return labels
