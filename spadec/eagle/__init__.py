"""EAGLE draft heads: the head model, its training data, DeepSpeed training, evaluation."""
