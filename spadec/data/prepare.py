"""The `prepare_data` stage: every dataset the later stages read, as JSONL files.

Outputs in `out_dir`:
  corpus_train.jsonl / corpus_heldout.jsonl   plain text documents {doc_id, text} (pre-training, perplexity)
  sft.jsonl / sft_heldout.jsonl               instruction records {id, doc_id, instruction, response, ...}
  distill_prompts.jsonl                       {id, instruction}: training-side prompts for self-distillation
  eval_<bench>.jsonl                          {id, category, turns, reference} per configured benchmark
  metrics.json                                counts and the leakage check
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from spadec.data.sources import DataSourceError, load_eval, load_instructions
from spadec.data.split import split_by_document
from spadec.data.stdlib_docs import iter_stdlib_documents
from spadec.io import atomic_path, write_json

log = logging.getLogger(__name__)


def write_records(path: Path, records: list[dict]) -> None:
    """Write records as JSON Lines through `datasets` (atomically)."""
    import datasets

    datasets.disable_progress_bars()
    if not records:
        raise DataSourceError(f"refusing to write an empty dataset: {path}")
    with atomic_path(path) as tmp:
        datasets.Dataset.from_list(records).to_json(str(tmp), lines=True, force_ascii=False)


def _documents(cfg: dict, sft_records: list[dict]) -> list[dict]:
    """Plain-text documents: the built-in corpus, or instruction pairs joined per document."""
    if cfg["sft"]["source"] == "stdlib_docs":
        return list(iter_stdlib_documents())
    by_doc: dict[str, list[str]] = {}
    for rec in sft_records:
        by_doc.setdefault(rec["doc_id"], []).append(f"{rec['instruction']}\n\n{rec['response']}")
    return [{"doc_id": d, "text": "\n\n".join(parts)} for d, parts in by_doc.items()]


def sample_prompts_file(data_dir: str | Path) -> Path:
    """The benchmark whose first prompts the base and D-LLM evaluations decode as samples:
    `heldout` where the config has it, else the first by name (the paper configs call
    theirs `alpaca_heldout`)."""
    files = sorted(Path(data_dir).glob("eval_*.jsonl"), key=lambda f: (f.stem != "eval_heldout", f))
    if not files:
        raise FileNotFoundError(f"no benchmark (eval_*.jsonl) in {data_dir}")
    return files[0]


def prepare_data(cfg: dict, out_dir: str | Path, prompts_dir: str | Path) -> dict:
    """Build all datasets for one model from its resolved `data` config; return metrics."""
    out_dir = Path(out_dir)
    seed = cfg["seed"]
    frac = cfg["heldout_fraction"]
    sft_all = load_instructions(cfg["sft"])
    sft_train, sft_heldout = split_by_document(sft_all, frac, seed)
    log.info("instruction records: %d train, %d held out", len(sft_train), len(sft_heldout))

    heldout_docs = {r["doc_id"] for r in sft_heldout}
    docs = _documents(cfg, sft_all)
    corpus_train = [d for d in docs if d["doc_id"] not in heldout_docs]
    corpus_heldout = [d for d in docs if d["doc_id"] in heldout_docs]
    leaked = {r["doc_id"] for r in sft_train} & heldout_docs
    if leaked:  # cannot happen with split_by_document; checked because the promise matters
        raise AssertionError(f"documents on both sides of the split: {sorted(leaked)[:5]}")

    rng = random.Random(seed)
    distill = rng.sample(sft_train, min(cfg["distill_prompts"]["n"], len(sft_train)))
    distill = [{"id": r["id"], "instruction": r["instruction"]} for r in distill]

    shuffled_heldout = sft_heldout[:]
    random.Random(seed + 1).shuffle(shuffled_heldout)
    evals = {
        name: load_eval(spec, Path(prompts_dir), shuffled_heldout)
        for name, spec in cfg["eval"].items()
    }

    write_records(out_dir / "corpus_train.jsonl", corpus_train)
    write_records(out_dir / "corpus_heldout.jsonl", corpus_heldout)
    write_records(out_dir / "sft.jsonl", sft_train)
    write_records(out_dir / "sft_heldout.jsonl", sft_heldout)
    write_records(out_dir / "distill_prompts.jsonl", distill)
    for name, records in evals.items():
        write_records(out_dir / f"eval_{name}.jsonl", records)

    metrics = {
        "sft_train": len(sft_train),
        "sft_heldout": len(sft_heldout),
        "documents_train": len({r["doc_id"] for r in sft_train}),
        "documents_heldout": len(heldout_docs),
        "corpus_train_chars": sum(len(d["text"]) for d in corpus_train),
        "corpus_heldout_chars": sum(len(d["text"]) for d in corpus_heldout),
        "distill_prompts": len(distill),
        "eval": {name: len(r) for name, r in evals.items()},
        "leaked_documents": 0,
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics
