"""The EAGLE-2 tree size used when neither the config nor the command line sets one:
the published 60 nodes (root included), 5 expansion steps, 10 children per node.

Torch-free, so that `spadec --help` can show it without importing torch.
"""

DEFAULT_TOTAL_TOKENS, DEFAULT_DEPTH, DEFAULT_TOP_K = 60, 5, 10

# medusa.decode's defaults for callers without a config (`spadec generate` on a results
# folder without settings files, tests): the CPU tree and the lossless rule
MEDUSA_DECODE_DEFAULTS = {
    "tree": "small_16",
    "acceptance": "lossless",
    "typical_threshold": 0.09,
    "typical_alpha": 0.3,
}
