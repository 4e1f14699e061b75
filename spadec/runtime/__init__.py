"""The target runtime: what every decoding method and training-side generator runs on.

attention   the one attention primitive (projections, RoPE, masked softmax, o_proj) and
            the one decoder-layer body
cache       LayerSkipCache, the per-layer K/V cache of layer-skipping decoding
forward     run_layers, the one cached forward (a chain of new tokens or a draft tree,
            with D-LLM gating), and committing a pass to the cache
sampling    DecodeResult, token picking, the stop rule, device syncs
load        loading a target model and its tokenizer

Nothing here imports another `spadec` subpackage: decoding, the D-LLM model, the EAGLE
head and the stages all build on it. A D-LLM is recognised by its `gate` method.
"""
