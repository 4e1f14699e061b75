"""The EAGLE-2 tree size used when neither the config nor the command line sets one:
the published 60 nodes (root included), 5 expansion steps, 10 children per node.

Torch-free, so that `spadec --help` can show it without importing torch.
"""

DEFAULT_TOTAL_TOKENS, DEFAULT_DEPTH, DEFAULT_TOP_K = 60, 5, 10
