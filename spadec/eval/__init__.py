"""Evaluation: side-by-side speed runs and the metrics every table is built from."""
