"""A floor on the wall time of one training step, for tests of time limits and kills.

With `SPADEC_MIN_STEP_SECONDS=s` in the environment every training step lasts at least `s`
seconds (the loop sleeps what the step left over). How far a job gets in t seconds is then
at most t / s steps on any machine, so a test can place a time limit or a kill after a
checkpoint and before the end without assuming how fast the machine is. Sleeping changes no
number the job computes. Unset (the default), the steps run as they come.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

ENV_VAR = "SPADEC_MIN_STEP_SECONDS"
T = TypeVar("T")


def min_step_seconds() -> float:
    """The floor set in the environment (0 when unset); a bad value fails with its name."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise ValueError(f"{ENV_VAR}={raw!r} must be a number of seconds >= 0")
    return value


def paced(steps: Iterable[T]) -> Iterator[T]:
    """`steps`, each (the loop body included) lasting at least `min_step_seconds()`."""
    floor = min_step_seconds()
    if floor == 0:
        yield from steps
        return
    started = time.monotonic()
    for step in steps:
        yield step  # the loop body runs here
        left = floor - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)
        started = time.monotonic()
