"""Named chat templates for base models that ship without one (config `base.chat_template`).

`alpaca` is the prompt format the published D-LLM and SpaDec code trained and evaluated
with; `vicuna` is Vicuna v1.1's conversation format.
"""

from __future__ import annotations

ALPACA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}"
    "{% if loop.first %}Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n{% endif %}"
    "### Instruction:\n{{ message['content'] }}\n\n### Response:\n"
    "{% else %}{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
)

VICUNA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }} {% else %}"
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. {% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: {{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

NAMED = {"alpaca": ALPACA, "vicuna": VICUNA}


def resolve_template(value: str | None) -> str | None:
    """A named template, a literal Jinja template, or None (keep the tokenizer's own)."""
    if value is None:
        return None
    return NAMED.get(value, value)
