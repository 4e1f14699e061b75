"""Medusa draft heads: the heads model, the importer of published heads, DeepSpeed training."""
