"""The `prepare_base` stage: build or fetch the base model, save it as a standard HF
directory, evaluate it, and record metrics and provenance next to the weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from spadec.base.evaluate import evaluate_base
from spadec.base.sources import load_gguf_package, load_hf
from spadec.io import atomic_dir, write_json
from spadec.provenance import RunInfo
from spadec.runtime.load import DTYPES

log = logging.getLogger(__name__)


def prepare_base(
    settings: dict, data_dir: str | Path, out_dir: str | Path, ckpt_dir: str | Path
) -> dict | None:
    """Write the base model to `out_dir`; return its metrics (None on non-main ranks)."""
    run_info = RunInfo("prepare_base", settings)
    source = settings["source"]
    train_metrics: dict = {}
    if source == "pretrain":
        from spadec.base.pretrain import pretrain

        model, tokenizer, train_metrics = pretrain(settings, data_dir, ckpt_dir, settings["seed"])
        if not train_metrics.pop("is_main_process"):
            return None
    elif source == "gguf_package":
        model, tokenizer = load_gguf_package(settings)
    elif source == "hf":
        model, tokenizer = load_hf(settings)
    else:
        raise ValueError(f"unknown base source '{source}'")

    model = model.to(DTYPES[settings["dtype"]])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    metrics = {
        "source": source,
        **train_metrics,
        **evaluate_base(model, tokenizer, data_dir, settings),
    }
    metrics["num_layers"] = model.config.num_hidden_layers
    metrics["parameters"] = sum(t.numel() for t in model.parameters())
    with atomic_dir(out_dir) as tmp:
        model.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "metrics.json", metrics)
        run_info.write(tmp / "run_info.json")
    log.info("base model written to %s", out_dir)
    return metrics
