"""Base-model metrics: held-out perplexity against a unigram baseline, greedy decoding speed,
and sample answers to held-out prompts."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from spadec.base.chat import dialogue_text, prompt_ids
from spadec.data.prepare import sample_prompts_file
from spadec.decoding.autoregressive import autoregressive_decode
from spadec.io import read_jsonl
from spadec.logs import progress

log = logging.getLogger(__name__)


def _ids(tokenizer, texts: list[str], max_tokens: int, eos: bool) -> list[list[int]]:
    """Tokenise texts until `max_tokens` in total."""
    out, total = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos:
            ids = ids + [tokenizer.eos_token_id]
        out.append(ids)
        total += len(ids)
        if total >= max_tokens:
            break
    return out


@torch.inference_mode()
def perplexity(model, sequences: list[list[int]], window: int, device) -> tuple[float, int]:
    """Token-level perplexity over `sequences`, each scored in windows of `window` tokens."""
    nll, count = 0.0, 0
    for seq in progress(sequences, desc="perplexity", leave=False):
        for start in range(0, max(len(seq) - 1, 0), window):
            chunk = torch.tensor([seq[start : start + window + 1]], device=device)
            if chunk.shape[1] < 2:
                continue
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            nll += torch.nn.functional.cross_entropy(
                logits[0], chunk[0, 1:], reduction="sum"
            ).item()
            count += chunk.shape[1] - 1
    return math.exp(nll / max(count, 1)), count


def unigram_perplexity(train: list[list[int]], heldout: list[list[int]], vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fit on `train`: the floor any LM must beat."""
    counts = torch.ones(vocab_size, dtype=torch.float64)
    for seq in train:
        counts += torch.bincount(torch.tensor(seq[1:], dtype=torch.long), minlength=vocab_size)[
            :vocab_size
        ]
    logp = torch.log(counts / counts.sum())
    total = [t for seq in heldout for t in seq[1:]]
    return math.exp(-logp[torch.tensor(total, dtype=torch.long)].mean().item())


def evaluate_base(model, tokenizer, data_dir: str | Path, settings: dict) -> dict:
    """Metrics of a base model on the held-out data of `data_dir`."""
    ev = settings["eval"]
    device = next(model.parameters()).device
    data_dir = Path(data_dir)
    model.eval()
    window = min(512, getattr(model.config, "max_position_embeddings", 512) - 1)
    budget = ev["max_ppl_tokens"]
    metrics: dict = {}
    for name, train_file, heldout_file, text_of, eos in (
        ("text", "corpus_train.jsonl", "corpus_heldout.jsonl", lambda r: r["text"], True),
        ("chat", "sft.jsonl", "sft_heldout.jsonl", lambda r: dialogue_text(tokenizer, r), False),
    ):
        heldout = _ids(
            tokenizer, [text_of(r) for r in read_jsonl(data_dir / heldout_file)], budget, eos
        )
        train = _ids(
            tokenizer, [text_of(r) for r in read_jsonl(data_dir / train_file)], 20 * budget, eos
        )
        ppl, n = perplexity(model, heldout, window, device)
        uni = unigram_perplexity(train, heldout, len(tokenizer))
        metrics[f"heldout_ppl_{name}"] = round(ppl, 3)
        metrics[f"unigram_ppl_{name}"] = round(uni, 3)
        metrics[f"heldout_tokens_{name}"] = n
        log.info(
            "held-out %s: perplexity %.2f (unigram baseline %.2f, %d tokens)", name, ppl, uni, n
        )

    prompts = read_jsonl(sample_prompts_file(data_dir))[: ev["decode_prompts"]]
    samples, new_tokens, wall = [], 0, 0.0
    autoregressive_decode(
        model, torch.tensor([prompt_ids(tokenizer, "Hello")], device=device), 4
    )  # warm-up
    for rec in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, rec["turns"][0])], device=device)
        res = autoregressive_decode(model, ids, ev["max_new_tokens"], tokenizer.eos_token_id)
        new_tokens += res.new_tokens
        wall += res.wall_s
        samples.append(
            {
                "id": rec["id"],
                "prompt": rec["turns"][0],
                "reference": rec.get("reference", ""),
                "answer": tokenizer.decode(res.output_ids, skip_special_tokens=True),
            }
        )
    metrics["greedy_tokens_per_s"] = round(new_tokens / wall, 2) if wall > 0 else None
    metrics["greedy_new_tokens"] = new_tokens
    metrics["device"] = str(device)
    metrics["samples"] = samples
    return metrics
