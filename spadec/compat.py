"""Small shims over transformers versions this project meets.

transformers 5.24 renamed the forward keyword `past_key_values` to `cache` (the old name
warns until 5.40). The pinned version uses the new name; GPU images may carry 5.17-5.23.
"""

from __future__ import annotations

import functools
import inspect


@functools.cache
def cache_kwarg() -> str:
    from transformers import LlamaForCausalLM

    params = inspect.signature(LlamaForCausalLM.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def with_cache(cache) -> dict:
    """Keyword arguments passing `cache` to a causal LM forward, for this transformers."""
    return {cache_kwarg(): cache, "use_cache": True}
