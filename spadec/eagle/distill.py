"""Self-distillation: the target answers the training prompts itself.

EAGLE heads (and SpaDec's predictor) learn the target's own distribution, so their
training text is what the target generates, not the dataset's reference answers.
Output: `distill.jsonl` with {id, instruction, prompt_ids, response_ids, response,
finished} per prompt (token ids kept, so later stages never re-tokenize), plus
metrics.json and run_info.json. Finished batches are appended to a partial file under
the checkpoint directory, tagged with the settings hash, so a killed job resumes there.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from spadec.base.chat import prompt_ids
from spadec.config import config_hash
from spadec.decoding.batched import generate_batch
from spadec.io import atomic_dir, read_jsonl, write_json, write_jsonl
from spadec.logs import progress
from spadec.provenance import RunInfo
from spadec.runtime.load import load_target

log = logging.getLogger(__name__)


def _resume(partial: Path, settings_hash: str) -> dict[str, dict]:
    """Records already generated under the same settings (a torn last line is dropped)."""
    done: dict[str, dict] = {}
    if not partial.is_file():
        return done
    lines = partial.read_text().splitlines()
    if not lines or json.loads(lines[0]).get("settings_hash") != settings_hash:
        log.info("ignoring %s: written under other settings", partial)
        partial.unlink()
        return done
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # the job was killed mid-write
        done[str(rec["id"])] = rec
    log.info("resuming: %d of the prompts already distilled", len(done))
    return done


def distill(
    settings: dict,
    target_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    target_name: str,
) -> dict:
    run_info = RunInfo(f"distill_{target_name}", settings)
    prompts = read_jsonl(Path(data_dir) / "distill_prompts.jsonl")
    if not prompts:
        raise ValueError(f"{data_dir}/distill_prompts.jsonl has no prompts")
    model, tokenizer = load_target(target_dir, settings["dtype"])
    settings_hash = config_hash({**settings, "target": str(target_dir)})
    partial = Path(ckpt_dir) / "distill.partial.jsonl"
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(partial, settings_hash)
    if not done:
        partial.write_text(json.dumps({"settings_hash": settings_hash}) + "\n")
    todo = [r for r in prompts if str(r["id"]) not in done]
    encoded = {str(r["id"]): prompt_ids(tokenizer, r["instruction"]) for r in todo}
    todo.sort(key=lambda r: -len(encoded[str(r["id"])]))  # similar lengths share a batch
    batch = settings["distill_batch_size"]
    generator = torch.Generator().manual_seed(settings["seed"])
    torch.manual_seed(settings["seed"])  # transformers' sampling draws from the global RNG
    t0 = time.perf_counter()
    new_tokens = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with partial.open("a") as sink:
        for first in progress(range(0, len(todo), batch), desc=f"distill {target_name}"):
            chunk = todo[first : first + batch]
            ids = [encoded[str(r["id"])] for r in chunk]
            outs = generate_batch(
                model,
                ids,
                settings["distill_max_new_tokens"],
                tokenizer.eos_token_id,
                pad,
                settings["distill_temperature"],
                generator,
            )
            for rec, p, resp in zip(chunk, ids, outs, strict=True):
                row = {
                    "id": rec["id"],
                    "instruction": rec["instruction"],
                    "prompt_ids": p,
                    "response_ids": resp,
                    "response": tokenizer.decode(resp, skip_special_tokens=True),
                    "finished": bool(resp) and resp[-1] == tokenizer.eos_token_id,
                }
                done[str(rec["id"])] = row
                new_tokens += len(resp)
                sink.write(json.dumps(row) + "\n")
            sink.flush()
    wall = time.perf_counter() - t0
    records = [done[str(r["id"])] for r in prompts]
    lengths = [len(r["response_ids"]) for r in records]
    metrics = {
        "target": target_name,
        "prompts": len(records),
        "response_tokens_mean": sum(lengths) / len(lengths),
        "finished_share": sum(r["finished"] for r in records) / len(records),
        "generated_tokens_this_run": new_tokens,
        "tokens_per_s": new_tokens / wall if wall > 0 else None,
        "wall_s": round(wall, 1),
    }
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "distill.jsonl", records)
        write_json(tmp / "metrics.json", metrics)
        run_info.write(tmp / "run_info.json", target=str(target_dir))
    partial.unlink(missing_ok=True)
    log.info("distilled %d prompts: %s", len(records), metrics)
    return metrics
