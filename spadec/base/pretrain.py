"""Pre-train a tiny Llama or Qwen2 from scratch on the offline corpus (source `pretrain`).

The corpus has two token streams: plain documents and chat-formatted instruction pairs
(so the model learns the chat format it is later asked questions in). Each training
sequence is a random window of one stream; windows are drawn from a generator seeded by
(seed, step, rank), so a resumed run sees exactly the batches an unbroken run would.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spadec.base.architecture import build_model
from spadec.base.chat import dialogue_text
from spadec.base.templates import resolve_template
from spadec.base.tokenizer import train_bpe_tokenizer
from spadec.checkpoint import latest_checkpoint, save_checkpoint
from spadec.config import config_hash
from spadec.io import read_jsonl
from spadec.logs import progress
from spadec.pacing import paced
from spadec.training import ADAMW_BETAS, step_seed

log = logging.getLogger(__name__)


@dataclass
class TokenStream:
    """Token ids of many texts laid end to end, with the offset where each text starts."""

    ids: torch.Tensor
    starts: torch.Tensor


def token_streams(
    tokenizer, documents: list[dict], dialogues: list[dict]
) -> dict[str, TokenStream]:
    """Documents (each closed by EOS) and chat dialogues as two streams."""
    eos = tokenizer.eos_token_id
    streams = {}
    texts = {
        "text": [d["text"] for d in documents],
        "chat": [dialogue_text(tokenizer, r) for r in dialogues],
    }
    for name, items in texts.items():
        ids: list[int] = []
        starts: list[int] = []
        for enc in tokenizer(items, add_special_tokens=False)["input_ids"]:
            starts.append(len(ids))
            ids.extend(enc)
            if name == "text":
                ids.append(eos)
        streams[name] = TokenStream(
            torch.tensor(ids, dtype=torch.long), torch.tensor(starts, dtype=torch.long)
        )
    return streams


def sample_batch(
    streams: dict[str, TokenStream], batch_size: int, seq_len: int, chat_share: float, seed: int
) -> torch.Tensor:
    """Windows of `seq_len` tokens. Chat windows start where a dialogue starts, so every
    answer in them is seen after its question (a model cannot learn to answer *about* the
    question from answers whose question was cut off); text windows start anywhere."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch_size):
        name = "chat" if torch.rand((), generator=gen).item() < chat_share else "text"
        stream = streams[name]
        last = len(stream.ids) - seq_len
        if last <= 0:
            raise ValueError(
                f"the {name} stream has {len(stream.ids)} tokens, fewer than seq_len {seq_len}"
            )
        if name == "chat":
            starts = stream.starts[stream.starts < last]
            start = int(starts[torch.randint(0, len(starts), (), generator=gen)])
        else:
            start = int(torch.randint(0, last, (), generator=gen))
        rows.append(stream.ids[start : start + seq_len])
    return torch.stack(rows)


def lr_at(step: int, p: dict) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak."""
    if step < p["warmup_steps"]:
        return p["lr"] * (step + 1) / p["warmup_steps"]
    span = max(1, p["steps"] - p["warmup_steps"])
    frac = min(1.0, (step - p["warmup_steps"]) / span)
    floor = p["min_lr_ratio"]
    return p["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def load_or_train_tokenizer(settings: dict, ckpt_dir: Path, documents, dialogues):
    """The tokenizer is part of the resumable state: a resumed run must reuse it exactly."""
    from transformers import AutoTokenizer

    tok_dir = ckpt_dir / f"tokenizer_{config_hash(settings)}"
    if (tok_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(tok_dir)
    texts = [d["text"] for d in documents]
    texts += [
        f"<|user|>{r['instruction']}<|eos|><|assistant|>{r['response']}<|eos|>" for r in dialogues
    ]
    tok = train_bpe_tokenizer(texts, settings["pretrain"]["vocab_size"])
    # A config that names a chat template (the paper's `alpaca`) gets it here as from a
    # hub model, so the model pre-trains on, and is later prompted in, that format.
    tok.chat_template = resolve_template(settings.get("chat_template")) or tok.chat_template
    tok.save_pretrained(tok_dir)
    return AutoTokenizer.from_pretrained(tok_dir)


def pretrain(settings: dict, data_dir: str | Path, ckpt_dir: str | Path, seed: int = 0):
    """Train tokenizer and model; return (model, tokenizer, training metrics)."""
    from accelerate import Accelerator

    p = settings["pretrain"]
    data_dir, ckpt_dir = Path(data_dir), Path(ckpt_dir)
    documents = read_jsonl(data_dir / "corpus_train.jsonl")
    dialogues = read_jsonl(data_dir / "sft.jsonl")
    settings_hash = config_hash({"settings": settings, "seed": seed})

    accel = Accelerator(mixed_precision=p["mixed_precision"], cpu=not torch.cuda.is_available())
    if accel.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = load_or_train_tokenizer(settings, ckpt_dir, documents, dialogues)
    accel.wait_for_everyone()
    if not accel.is_main_process:
        tokenizer = load_or_train_tokenizer(settings, ckpt_dir, documents, dialogues)
    streams = token_streams(tokenizer, documents, dialogues)
    log.info(
        "token streams: text %d, chat %d tokens; vocab %d",
        len(streams["text"].ids),
        len(streams["chat"].ids),
        len(tokenizer),
    )

    torch.manual_seed(seed)
    model = build_model(p, tokenizer)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=p["lr"], betas=ADAMW_BETAS, weight_decay=p["weight_decay"]
    )
    start_step, history = 0, []
    ckpt = latest_checkpoint(ckpt_dir, settings_hash)
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state())
        optimizer.load_state_dict(ckpt.optimizer_state())
        start_step, history = ckpt.step, ckpt.state.get("history", [])
        log.info("resuming from %s (step %d)", ckpt.path, start_step)
    model, optimizer = accel.prepare(model, optimizer)
    model.train()

    n_params = sum(t.numel() for t in model.parameters())
    log.info(
        "model: %.2f M parameters, %d layers; %d steps of %dx%d tokens",
        n_params / 1e6,
        p["num_layers"],
        p["steps"],
        p["batch_size"],
        p["seq_len"],
    )
    t0, tokens = time.perf_counter(), 0
    bar = progress(
        range(start_step, p["steps"]),
        desc="pretrain",
        initial=start_step,
        total=p["steps"],
        disable=not accel.is_local_main_process,
    )
    for step in paced(bar):
        batch = sample_batch(
            streams,
            p["batch_size"],
            p["seq_len"],
            p["chat_share"],
            seed=step_seed(seed, step, accel.num_processes, accel.process_index),
        )
        batch = batch.to(accel.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p)
        loss = model(input_ids=batch, labels=batch).loss
        accel.backward(loss)
        accel.clip_grad_norm_(model.parameters(), p["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.numel() * accel.num_processes
        if (step + 1) % p["log_every"] == 0 or step + 1 == p["steps"]:
            value = accel.reduce(loss.detach(), reduction="mean").item()
            history.append({"step": step + 1, "loss": round(value, 4), "lr": lr_at(step, p)})
            bar.set_postfix(loss=f"{value:.3f}")
            log.info("step %d/%d loss %.4f", step + 1, p["steps"], value)
        if (step + 1) % p["checkpoint_every"] == 0 and step + 1 < p["steps"]:
            accel.wait_for_everyone()
            if accel.is_main_process:
                save_checkpoint(
                    ckpt_dir,
                    step + 1,
                    accel.unwrap_model(model).state_dict(),
                    optimizer.state_dict(),
                    settings_hash,
                    {"history": history},
                )
    elapsed = time.perf_counter() - t0
    accel.wait_for_everyone()
    model = accel.unwrap_model(model)
    metrics = {
        "parameters": n_params,
        "steps": p["steps"],
        "resumed_from_step": start_step,
        "train_tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 and tokens else None,
        "train_wall_s": round(elapsed, 1),
        "loss_history": history,
        "final_train_loss": history[-1]["loss"] if history else None,
        "processes": accel.num_processes,
        "is_main_process": accel.is_main_process,
    }
    return model, tokenizer, metrics
