"""The EAGLE-2 tree size used when neither the config nor the command line sets one:
the published 60 nodes (root included), 5 expansion steps, 10 children per node.

Torch-free, so that `spadec --help` can show it without importing torch.
"""

DEFAULT_TOTAL_TOKENS, DEFAULT_DEPTH, DEFAULT_TOP_K = 60, 5, 10


def parse_tree_spec(text: str) -> tuple[int, int, int]:
    """ "total_tokens/depth/top_k" (a config's tree candidate, a benchmark's --trees) ->
    the three numbers; ValueError naming the text when it is malformed or not a tree
    (a tree needs a drafted node, and no more children per node than nodes)."""
    parts = text.strip().split("/")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"tree {text!r}: expected total_tokens/depth/top_k, e.g. 16/4/4")
    total, depth, top_k = (int(p) for p in parts)
    if total < 2 or top_k < 1 or top_k > total:
        raise ValueError(f"tree {text!r}: needs total_tokens >= 2 and 1 <= top_k <= total_tokens")
    return total, depth, top_k


# medusa.decode's defaults for callers without a config (`spadec generate` on a results
# folder without settings files, tests): the CPU tree and the lossless rule
MEDUSA_DECODE_DEFAULTS = {
    "tree": "small_16",
    "acceptance": "lossless",
    "typical_threshold": 0.09,
    "typical_alpha": 0.3,
}
