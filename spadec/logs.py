"""Logging set-up and progress bars that behave in log files.

Jobs write to a Snakemake `log:` file, not a terminal: a bar refreshing ten times a
second would fill it with carriage returns, so off a TTY bars update rarely.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable


def setup_logging(level: str | int | None = None) -> None:
    level = level or os.environ.get("SPADEC_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # DeepSpeed and transformers are chatty at INFO on every import.
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress(iterable: Iterable | None = None, **kwargs):
    """tqdm with a refresh interval suited to where the output goes."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 15.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    kwargs.setdefault("disable", os.environ.get("SPADEC_NO_PROGRESS") == "1")
    return tqdm(iterable, **kwargs)
