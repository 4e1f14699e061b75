"""D-LLM: dynamic layer skipping models (routers, cache, decoding, training).

`spadec.dllm.modeling` registers the model types with transformers' Auto classes when
imported (and `import spadec` arranges that for anyone who imports transformers).
"""
