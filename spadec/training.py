"""Conventions the trainers share (base pretraining, D-LLM fine-tuning, EAGLE head):
the AdamW betas and how a run's seed is mixed into per-step and per-epoch seeds.

Each derived seed depends on (seed, step or epoch, rank) only, so a resumed run draws
what the unbroken run drew. The strides are primes larger than any step count times
world size a run reaches, so two (seed, step, rank) triples never share a seed.
"""

from __future__ import annotations

ADAMW_BETAS = (0.9, 0.95)
STEP_SEED_STRIDE = 1_000_003
EPOCH_SEED_STRIDE = 7919


def step_seed(seed: int, step: int, world: int = 1, rank: int = 0) -> int:
    """The seed of micro-step `step` on `rank` of `world` processes."""
    return seed * STEP_SEED_STRIDE + step * world + rank


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s sample order (the same on every rank)."""
    return seed * EPOCH_SEED_STRIDE + epoch
