"""Peers: what a user would run instead of our methods, timed beside them (reference rows
of the tables, `catalog.PEERS`).

hf_generate       transformers' `model.generate`, greedy (`do_sample=False`) at
                  temperature 0, on the dense target
hf_prompt_lookup  the same with its built-in prompt-lookup decoding
                  (`prompt_lookup_num_tokens`), drafts copied from the prompt's n-grams

They are timed like our decoders (device syncs around the call, prefill included) and
return the same `DecodeResult`; target forwards are counted with a forward hook. Greedy,
their output must equal `ar`'s token for token (the eval records say whether it does).
"""

from __future__ import annotations

import time

import torch

from spadec.runtime.sampling import DecodeResult, sync

# drafted tokens per prompt-lookup step (transformers' documentation suggests ~10) and
# the longest n-gram matched in the prompt (transformers' default)
PROMPT_LOOKUP_TOKENS = 10
PROMPT_LOOKUP_NGRAM = 2


def _generation_config(model, max_new_tokens, eos_token_id, temperature, prompt_lookup):
    """A full generation config, so the model's own `generation_config.json` (its eos,
    sampling defaults) changes nothing: no eos given = none, as for `ar` (an empty list:
    `generate` fills every None from the model's generation config)."""
    from transformers import GenerationConfig

    pad = eos_token_id if eos_token_id is not None else model.config.pad_token_id
    settings = dict(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        eos_token_id=eos_token_id if eos_token_id is not None else [],
        pad_token_id=pad if pad is not None else 0,
        bos_token_id=None,
        use_cache=True,
    )
    if temperature > 0:  # the target's plain sampling distribution, as ours samples
        settings.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        settings.update(temperature=None, top_k=None, top_p=None)
    if prompt_lookup:
        settings.update(
            prompt_lookup_num_tokens=prompt_lookup, max_matching_ngram_size=PROMPT_LOOKUP_NGRAM
        )
    return GenerationConfig(**settings)


@torch.inference_mode()
def hf_generate_decode(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    prompt_lookup: int | None = None,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    """`model.generate` on `input_ids` [1, n] (with prompt lookup when `prompt_lookup`
    drafted tokens per step are given); timed with device syncs like `ar`. Sampled
    (temperature > 0), it draws from torch's global generator, seeded from `generator`'s
    seed inside a forked RNG state (reproducible; not the stream our decoders draw)."""
    config = _generation_config(model, max_new_tokens, eos_token_id, temperature, prompt_lookup)
    calls = [0]

    def count(module, args):
        calls[0] += 1

    hook = model.register_forward_pre_hook(count)
    mask = torch.ones_like(input_ids)
    cuda = [input_ids.device] if input_ids.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            if temperature > 0 and generator is not None:
                torch.manual_seed(generator.initial_seed())
            sync(input_ids.device)
            start = time.perf_counter()
            out = model.generate(input_ids, attention_mask=mask, generation_config=config)
            sync(input_ids.device)
            wall = time.perf_counter() - start
    finally:
        hook.remove()
    ids = out[0, input_ids.shape[1] :].tolist()
    if eos_token_id is not None and eos_token_id in ids:  # padding after eos, if any
        ids = ids[: ids.index(eos_token_id) + 1]
    extra = {"peer": "prompt_lookup" if prompt_lookup else "generate"}
    if prompt_lookup:
        extra["prompt_lookup_tokens"] = prompt_lookup
        extra["max_matching_ngram_size"] = PROMPT_LOOKUP_NGRAM
    forwards = calls[0]
    if forwards > 1 and ids:  # tokens committed per target forward after the prefill
        extra["tau"] = (len(ids) - 1) / (forwards - 1)
    return DecodeResult(ids, len(ids), wall, forwards, extra)
