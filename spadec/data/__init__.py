"""Datasets for every stage: offline corpora, external loaders, splits, JSONL outputs."""
