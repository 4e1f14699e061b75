"""Fold the LoRA adapters into the weights, and write the final D-LLM HF directory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from spadec.dllm.build import dllm_from_base
from spadec.io import atomic_dir, write_json
from spadec.provenance import RunInfo
from spadec.runtime.load import DTYPES

log = logging.getLogger(__name__)


def merge_lora(
    adapter_dir: str | Path, base_dir: str | Path, settings: dict, out_dir: str | Path
) -> None:
    """Base weights + adapter (LoRA on the projections, trained routers) -> one plain model."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    run_info = RunInfo("merge_lora", settings)
    model = dllm_from_base(base_dir, settings)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    leftovers = [n for n, _ in merged.named_parameters() if "lora_" in n or "modules_to_save" in n]
    if leftovers:
        raise RuntimeError(f"merge left adapter parameters behind: {leftovers[:3]}")
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        run_info.write(tmp / "run_info.json", adapter=str(adapter_dir), base=str(base_dir))
    log.info("merged %s into %s", adapter_dir, out_dir)


def convert_hf(merged_dir: str | Path, out_dir: str | Path, dtype: str) -> dict:
    """The final, self-describing HF directory: the D-LLM config with its own model_type,
    safetensors in `dtype`, the tokenizer; checked by reloading through the Auto classes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_info = RunInfo("convert_hf", {"dtype": dtype})
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=DTYPES[dtype]).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    probe = torch.tensor([[tokenizer.bos_token_id or 0, 5, 6, 7]])
    with torch.no_grad():
        expected = model(probe).logits
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=DTYPES[dtype]).eval()
        with torch.no_grad():
            diff = (reloaded(probe).logits - expected).abs().max().item()
        if diff != 0.0:
            raise RuntimeError(f"reloaded model differs from the converted one (max |diff| {diff})")
        info = {
            "model_type": model.config.model_type,
            "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dynamic_layers": len(model.config.dynamic_layers()),
        }
        write_json(tmp / "convert.json", info)
        run_info.write(tmp / "run_info.json", merged=str(merged_dir))
    return info
