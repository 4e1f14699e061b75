"""The generic speculative decoding loop at batch 1 (DESIGN §8): draft a tree -> compile
it -> verify it in one target forward -> finish the pass -> accept -> commit -> let the
drafter observe the committed tokens, repeated until the stop rule.

The loop knows no drafter and no method: the drafter (`draft(root) -> DraftTree`,
`observe(features, next_tokens)`, `forwards`), the verification step (`verify_step`,
`spadec.decoding.verify`) and the acceptance rule (`spadec.decoding.accept`) are
parameters. Every piece of state (target cache, drafter state, the tree) is explicit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from spadec.decoding.accept import Acceptance, AcceptanceRule, accept_lossless
from spadec.decoding.timing import NO_TIMER, StepTimer
from spadec.decoding.tree import CompiledTree, compile_tree
from spadec.decoding.verify import VerifyStep, verify_all_layers
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import TreePass, chain_forward, commit, finish_pass, gate_matrix
from spadec.runtime.sampling import DecodeResult, finished, pick_token, sync, truncate

StepObserver = Callable[[CompiledTree, Acceptance], None]  # sees every step's tree and result


@dataclass
class StepStats:
    """Counters over the verification steps of one generation."""

    accepted: list[int] = field(default_factory=list)  # draft tokens accepted per step
    verified: list[int] = field(default_factory=list)  # tokens in each target forward
    layer_runs: list[list[bool]] = field(default_factory=list)  # per step, per layer
    path_gates: list[torch.Tensor] = field(default_factory=list)  # [a+1, L] per step
    # per step, per layer whose routers were consulted: did the verified tokens disagree?
    splits: list[bool] = field(default_factory=list)

    def summary(self, num_layers: int) -> dict:
        steps = len(self.accepted)
        out = {
            "steps": steps,
            "tau": (sum(self.accepted) + steps) / steps if steps else float("nan"),
            "accept_histogram": dict(sorted(Counter(self.accepted).items())),
            "accepted_lengths": list(self.accepted),  # drafts accepted at each step
            "verified_tokens_per_step": sum(self.verified) / steps if steps else float("nan"),
        }
        if steps:
            runs = torch.tensor(self.layer_runs, dtype=torch.float32)
            gates = torch.cat(self.path_gates).float()
            out["layer_load_share"] = runs.mean().item()
            # per layer, the share of target forwards that ran it (as in plain decoding)
            out["layer_execution_rate"] = [round(x, 4) for x in runs.mean(0).tolist()]
            out["executed_share"] = gates.mean().item()
            if self.splits:
                # how often one tree's tokens want different things of a layer: what a
                # multi-token robust router is meant to lower
                out["tree_router_split_rate"] = sum(self.splits) / len(self.splits)
            # share of accepted drafts at each depth, given the previous depth was accepted
            depth_hits = [
                sum(a >= d for a in self.accepted)
                for d in range(1, 1 + max(self.accepted, default=0))
            ]
            prev = [steps, *depth_hits][: len(depth_hits)]
            out["per_depth_acceptance"] = [
                round(h / p, 4) for h, p in zip(depth_hits, prev, strict=True)
            ]
        return out


@torch.inference_mode()
def speculative_decode(
    target,
    drafter,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    verify_step: VerifyStep = verify_all_layers,
    on_step: StepObserver | None = None,
    step_timing: bool = False,
    sync_timing: bool = False,
    acceptance: AcceptanceRule = accept_lossless,
) -> DecodeResult:
    """Generate up to `max_new_tokens` after `input_ids` [1, n] with a tree `drafter`
    (`observe(features, next_tokens)`, `draft(root) -> DraftTree`, `forwards`).

    Greedy output equals the target's own greedy decoding token for token. `extra` holds
    tau, the acceptance histogram, per-depth acceptance, verified tokens per step, the
    layer-load share (share of (step, layer) pairs whose weights were used), per layer the
    share of target forwards that ran it (`layer_execution_rate`) and the executed-layer
    share of the committed tokens. With `step_timing`, `extra["timing"]` holds the
    seconds of each step of the loop summed over the generation and their shares of the
    wall time (`spadec.decoding.timing`; `sync_timing`: a CUDA sync at each boundary).
    `acceptance` decides which drafted nodes are kept (`spadec.decoding.accept`).
    """
    if input_ids.shape[0] != 1:
        raise ValueError("speculative decoding runs at batch size 1")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: decoding needs at least one token")
    device = input_ids.device
    num_layers = len(target.model.layers)
    dtype = target.model.embed_tokens.weight.dtype
    cache = LayerSkipCache.empty(num_layers)
    stats = StepStats()
    timer = StepTimer(step_timing, device, sync_timing) if step_timing else NO_TIMER
    sync(device)
    start = time.perf_counter()

    prompt = input_ids[0]
    logits, features, _ = chain_forward(target, prompt, cache, last_logits=True)
    root = pick_token(logits[-1], temperature, generator)
    out = [root]
    drafter.observe(features, torch.cat([prompt[1:], torch.tensor([root], device=device)]))
    timer.lap("prefill", start)
    forwards = 1
    while not finished(out, max_new_tokens, eos_token_id):
        t = timer.now()
        compiled = compile_tree(drafter.draft(root), dtype)
        t = timer.lap("draft", t)
        tp = verify_step(target, compiled, cache, timer=timer)
        logits, features = finish_pass(target, tp)
        # logits/features are in batch order; the batch may hold a subset of the nodes
        logits, features = _scatter(tp, logits), _scatter(tp, features)
        t = timer.lap("verify", t)
        acc = acceptance(compiled, logits, _verified(tp), temperature, generator)
        t = timer.lap("accept", t)
        commit(cache, tp, acc.path)
        timer.lap("commit", t)
        if on_step is not None:
            on_step(compiled, acc)
        forwards += 1
        stats.accepted.append(acc.accepted)
        stats.verified.append(int(tp.nodes.numel()))
        stats.layer_runs.append(list(tp.layer_ran))
        stats.splits.extend(split for split in tp.split if split is not None)
        stats.path_gates.append(gate_matrix(tp)[acc.path])
        drafted = compiled.tokens[acc.path[1:]]
        out.extend(drafted.tolist())
        out.append(acc.next_token)
        root = acc.next_token
        t = timer.now()
        drafter.observe(
            features[acc.path], torch.cat([drafted, torch.tensor([root], device=device)])
        )
        timer.lap("draft", t)
    sync(device)
    wall = time.perf_counter() - start
    out = truncate(out, max_new_tokens, eos_token_id)
    extra = stats.summary(num_layers)
    extra["draft_forwards"] = drafter.forwards
    extra["kv_cache_entries"] = sum(cache.layer_lengths())  # K/V held, over all layers
    if timer.enabled:
        extra["timing"] = timer.summary(wall)
    return DecodeResult(out, len(out), wall, forwards, extra)


def _scatter(tp: TreePass, rows: torch.Tensor) -> torch.Tensor:
    if rows.shape[0] == tp.num_nodes:
        return rows
    full = rows.new_zeros(tp.num_nodes, rows.shape[1])
    full[tp.nodes] = rows
    return full


def _verified(tp: TreePass) -> torch.Tensor | None:
    """[T] bool: the nodes the target ran (None: all; a pruning verify step drops some,
    and a node not verified must never be accepted)."""
    if tp.nodes.numel() == tp.num_nodes:
        return None
    verified = torch.zeros(tp.num_nodes, dtype=torch.bool, device=tp.nodes.device)
    verified[tp.nodes] = True
    return verified
