"""Deterministic train / held-out split by document."""

from __future__ import annotations

import hashlib


def heldout_bucket(doc_id: str, seed: int) -> float:
    """A stable number in [0, 1) for a document: independent of record order and platform."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_document(
    records: list[dict], heldout_fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """Put every record of a document on the same side; about `heldout_fraction` of documents
    (not records) are held out."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    train, heldout = [], []
    for rec in records:
        (heldout if heldout_bucket(rec["doc_id"], seed) < heldout_fraction else train).append(rec)
    if not train or not heldout:
        raise ValueError(
            f"split of {len(records)} records left one side empty "
            f"(train {len(train)}, held-out {len(heldout)}): need more documents"
        )
    return train, heldout
