"""The draft vocabulary: how often each token occurs in the answers an EAGLE head learnt.

Each draft level multiplies the head's output by the target's LM head (V rows: 49,152 on
SmolLM2). Drafting over the N most frequent answer tokens only (EAGLE-3 ships such a
reduced vocabulary with a token map) divides that cost by V / N; verification still uses
the full vocabulary, so the output does not change (the acceptance rules never read the
draft's probabilities), only which candidates the tree holds.

`train_eagle` counts the answer tokens of its shards into the head directory
(`token_counts.safetensors`); for a head trained before that, or a published one:

    python -m spadec.eagle.vocab --head results/tiny/eagle/dense/head \\
        --data results/tiny/eagle/dense/data/shard_*
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spadec.artefacts import load_safetensors, read_config_json
from spadec.eagle.data import SHARD_FILE
from spadec.io import atomic_path

COUNTS_FILE = "token_counts.safetensors"


class DraftVocabError(ValueError):
    """A draft vocabulary that cannot be built: no counts, or counts of another vocabulary."""


def answer_token_counts(shard_dirs: list[str | Path], vocab_size: int) -> torch.Tensor:
    """[vocab_size] int64: how often each token is an answer token of the shards."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for d in shard_dirs:
        path = Path(d) / SHARD_FILE
        if not path.is_file():
            raise DraftVocabError(f"{d}: not an EAGLE data shard (no {SHARD_FILE})")
        with safe_open(str(path), framework="pt") as handle:
            ids = handle.get_tensor("input_ids").long()
            answer = handle.get_tensor("loss_mask").bool()
        if ids.numel() and int(ids.max()) >= vocab_size:
            raise DraftVocabError(f"{path}: token id {int(ids.max())} >= vocabulary {vocab_size}")
        counts += torch.bincount(ids[answer], minlength=vocab_size)
    return counts


def write_token_counts(path: str | Path, counts: torch.Tensor) -> None:
    save_file({"token_counts": counts.contiguous()}, str(path))


def load_token_counts(head_dir: str | Path) -> torch.Tensor | None:
    """The head's answer-token counts, or None when its directory has none."""
    path = Path(head_dir) / COUNTS_FILE
    if not path.is_file():
        return None
    state = load_safetensors(path)
    if "token_counts" not in state:
        raise DraftVocabError(f"{path}: no 'token_counts' tensor")
    return state["token_counts"]


def draft_token_ids(counts: torch.Tensor | None, size: int, head_dir: str | Path) -> torch.Tensor:
    """The `size` most frequent answer tokens (ties: the lower id first), in id order."""
    if counts is None:
        raise DraftVocabError(
            f"{head_dir}: eagle.draft_vocab asks for a reduced draft vocabulary but the head "
            f"has no {COUNTS_FILE} (python -m spadec.eagle.vocab --head {head_dir} --data "
            "SHARD ...), or set draft_vocab: null"
        )
    if size >= counts.numel():
        return torch.arange(counts.numel())
    # a stable sort of the negated counts puts ties in id order
    order = torch.sort(-counts, stable=True).indices
    return order[:size].sort().values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--head", required=True, help="an EAGLE head directory")
    parser.add_argument("--data", nargs="+", required=True, help="its EAGLE data shard dirs")
    args = parser.parse_args(argv)
    config = Path(args.head) / "config.json"
    if not config.is_file():
        parser.error(f"{args.head}: not an EAGLE head directory (no config.json)")
    vocab = int(read_config_json(config)["vocab_size"])
    try:
        counts = answer_token_counts(args.data, vocab)
    except DraftVocabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    with atomic_path(Path(args.head) / COUNTS_FILE) as tmp:
        write_token_counts(tmp, counts)
    print(f"{args.head}/{COUNTS_FILE}: {int(counts.sum())} answer tokens, {vocab} ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
