"""Decoding methods: autoregressive baselines now; speculative methods join later."""
