"""Normalise external dataset formats into the two record shapes the pipeline uses.

- instruction records: {id, doc_id, instruction, response, messages?}
- eval records (MT-bench-like): {id, category, turns: [str, ...], reference}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class FormatError(ValueError):
    """A record does not have the fields its declared format requires."""


def _need(rec: dict, key: str, fmt: str, where: str) -> object:
    if key not in rec:
        raise FormatError(f"{where}: {fmt} record has no field '{key}' (fields: {sorted(rec)})")
    return rec[key]


def from_alpaca(records: Iterable[dict], where: str) -> Iterator[dict]:
    """Alpaca: {instruction, input, output}; a non-empty input is appended to the instruction."""
    for i, rec in enumerate(records):
        instruction = str(_need(rec, "instruction", "alpaca", where)).strip()
        extra = str(rec.get("input") or "").strip()
        response = str(_need(rec, "output", "alpaca", where)).strip()
        if extra:
            instruction = f"{instruction}\n\n{extra}"
        if instruction and response:
            yield {
                "id": f"alpaca:{i}",
                "doc_id": f"alpaca:{i}",
                "instruction": instruction,
                "response": response,
            }


_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "system": "system",
}


def from_sharegpt(records: Iterable[dict], where: str) -> Iterator[dict]:
    """ShareGPT: {id, conversations: [{from, value}, ...]}; keeps the whole dialogue in `messages`."""
    for i, rec in enumerate(records):
        conv = _need(rec, "conversations", "sharegpt", where)
        messages = []
        for turn in conv or []:
            role = _ROLE.get(str(turn.get("from", "")).lower())
            if role is None or not str(turn.get("value", "")).strip():
                continue
            if role != "system" and messages and messages[-1]["role"] == role:
                break  # malformed alternation: keep the clean prefix
            messages.append({"role": role, "content": str(turn["value"]).strip()})
        dialog = [m for m in messages if m["role"] != "system"]
        if len(dialog) < 2 or dialog[0]["role"] != "user":
            continue
        rid = str(rec.get("id", i))
        yield {
            "id": f"sharegpt:{rid}",
            "doc_id": f"sharegpt:{rid}",
            "instruction": dialog[0]["content"],
            "response": dialog[1]["content"],
            "messages": messages,
        }


def from_fields(records: Iterable[dict], where: str, fields: dict) -> Iterator[dict]:
    """Any JSON/JSONL with named instruction/response (optional input) fields."""
    ins_key = fields.get("instruction", "instruction")
    res_key = fields.get("response", "response")
    inp_key = fields.get("input")
    for i, rec in enumerate(records):
        instruction = str(_need(rec, ins_key, "jsonl", where)).strip()
        if inp_key and str(rec.get(inp_key) or "").strip():
            instruction = f"{instruction}\n\n{str(rec[inp_key]).strip()}"
        response = str(_need(rec, res_key, "jsonl", where)).strip()
        if instruction and response:
            yield {
                "id": f"rec:{i}",
                "doc_id": f"rec:{i}",
                "instruction": instruction,
                "response": response,
            }


def eval_from_mt_bench(records: Iterable[dict], where: str) -> Iterator[dict]:
    """MT-bench question.jsonl: {question_id, category, turns, reference?}."""
    for rec in records:
        turns = [str(t) for t in _need(rec, "turns", "mt_bench", where)]
        if not turns:
            continue
        ref = rec.get("reference") or ""
        if isinstance(ref, list):
            ref = "\n".join(str(r) for r in ref)
        yield {
            "id": str(_need(rec, "question_id", "mt_bench", where)),
            "category": str(rec.get("category", "general")),
            "turns": turns,
            "reference": str(ref),
        }


def eval_from_instructions(records: Iterable[dict], category: str) -> Iterator[dict]:
    """One-turn eval records from instruction records (held-out splits, Alpaca-style sets)."""
    for rec in records:
        yield {
            "id": rec["id"],
            "category": rec.get("kind", category),
            "turns": [rec["instruction"]],
            "reference": rec["response"],
        }
