"""Where the time of a speculative generation goes: seconds per step of the loop
(`speculative_decode`), summed over one generation.

Parts (disjoint intervals inside the timed call, so they sum to at most its wall time):

  prefill         the prompt's forward, its commit and the drafter's first observe
  draft           drafting the tree and compiling it, plus the drafter observing the
                  committed tokens (the head's forward on them)
  verify          the target forward on the tree (verify step + final norm / lm head); a
                  verify step may split it: SpaDec's into `verify_first_k` (layers < K),
                  `predictor_ats` (predictor scores + ATS selection) and `verify_rest`
                  (the remaining layers, the final norm and lm head)
  accept          acceptance of the verified tree
  commit          compacting the accepted path into the target's cache
  host            the wall time minus the parts: bookkeeping between the steps

Off by default (`StepTimer()` does nothing). On CUDA the clock reads are only honest with
a device synchronisation at each boundary, which slows the loop: `sync=True` asks for it
(it is ignored elsewhere).
"""

from __future__ import annotations

import time

import torch

PARTS = ("prefill", "draft", "verify", "accept", "commit")
# eval_speed times the steps unless `eval.step_timing` is false (the schema's default is
# true). Its cost: about a dozen clock reads per step (~0.13 us each) against steps of
# milliseconds; measured on results/tiny (benchmarks/step_timing.py, 8 prompts x 8 rounds,
# CPU) the tokens/s with and without differ by less than the run-to-run noise (-4 % .. +3 %)
VERIFY_SPLIT = ("verify_first_k", "predictor_ats")


class StepTimer:
    """Accumulates seconds per named part; a disabled timer costs one attribute test."""

    def __init__(self, enabled: bool = False, device: torch.device | None = None, sync=False):
        self.enabled = enabled
        cuda = device is not None and torch.device(device).type == "cuda"
        self.sync_device = torch.device(device) if enabled and sync and cuda else None
        self.parts: dict[str, float] = {}

    def now(self) -> float:
        """The clock (after a device sync when asked for); 0.0 when disabled."""
        if not self.enabled:
            return 0.0
        if self.sync_device is not None:
            torch.cuda.synchronize(self.sync_device)
        return time.perf_counter()

    def lap(self, part: str, since: float) -> float:
        """Add the time since `since` (a `now()`) to `part`; returns the new now."""
        if not self.enabled:
            return 0.0
        t = self.now()
        self.parts[part] = self.parts.get(part, 0.0) + (t - since)
        return t

    def summary(self, wall_s: float) -> dict:
        """Seconds per part, host overhead (wall minus the parts) and shares of the wall."""
        secs = {p: self.parts.get(p, 0.0) for p in PARTS}
        if any(p in self.parts for p in VERIFY_SPLIT):
            for p in VERIFY_SPLIT:
                secs[p] = self.parts.get(p, 0.0)
            secs["verify_rest"] = max(secs["verify"] - sum(secs[p] for p in VERIFY_SPLIT), 0.0)
        secs["host"] = max(wall_s - sum(secs[p] for p in PARTS), 0.0)
        out = {f"{p}_s": s for p, s in secs.items()}
        out["wall_s"] = wall_s
        out["shares"] = {p: (s / wall_s if wall_s > 0 else float("nan")) for p, s in secs.items()}
        out["synced"] = self.sync_device is not None
        return out


NO_TIMER = StepTimer()


def sum_timings(timings: list[dict]) -> dict:
    """Per-generation timings (`StepTimer.summary`) summed over generations, with the
    shares of the summed wall time."""
    keys = sorted({k for t in timings for k in t if k.endswith("_s") and k != "wall_s"})
    wall = sum(t["wall_s"] for t in timings)
    secs = {k: sum(t.get(k, 0.0) for t in timings) for k in keys}
    return {
        **secs,
        "wall_s": wall,
        "shares": {k[:-2]: (v / wall if wall > 0 else float("nan")) for k, v in secs.items()},
    }
