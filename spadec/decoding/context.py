"""The model's context window as a hard limit: a prompt that leaves no room for the
tokens to generate is refused before decoding, never decoded past the positions the
model was trained on (RoPE would compute them without complaint)."""

from __future__ import annotations


class PromptTooLongError(ValueError):
    """A prompt that, with the tokens to generate, does not fit the model's context."""


def context_length(model) -> int | None:
    """The target's trained context (`max_position_embeddings`), None when unknown."""
    return getattr(model.config, "max_position_embeddings", None)


def check_prompt_fits(
    prompt_tokens: int, max_new_tokens: int, context: int | None, tree_room: int = 0
) -> None:
    """Refuse a prompt longer than `context - max_new_tokens - tree_room`. `tree_room` is
    what a tree method verifies beyond the last committed token (deepest draft), which
    also needs positions the model knows."""
    if context is None:
        return
    limit = context - max_new_tokens - tree_room
    if prompt_tokens > limit:
        tree = f" and a draft tree {tree_room} deep" if tree_room else ""
        raise PromptTooLongError(
            f"prompt is {prompt_tokens} tokens; with max-new-tokens {max_new_tokens}{tree} "
            f"the model's context of {context} allows at most {max(limit, 0)}"
        )
