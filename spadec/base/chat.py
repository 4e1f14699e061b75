"""Chat formatting shared by every stage that turns instruction records into tokens."""

from __future__ import annotations


def messages_for(record: dict) -> list[dict]:
    """The dialogue of an instruction record (multi-turn when the source had one)."""
    if record.get("messages"):
        return list(record["messages"])
    return [
        {"role": "user", "content": record["instruction"]},
        {"role": "assistant", "content": record["response"]},
    ]


def prompt_ids(tokenizer, user_text: str) -> list[int]:
    """Token ids of a one-turn prompt ending where the assistant's answer starts."""
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True
    )
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def dialogue_text(tokenizer, record: dict) -> str:
    return tokenizer.apply_chat_template(messages_for(record), tokenize=False)
