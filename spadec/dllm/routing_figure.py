"""One D-LLM's routing at a glance: per-layer execution rates and executed layers per token."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from spadec.decoding.catalog import colour  # noqa: E402
from spadec.dllm.routing import TOKEN_DEPENDENT_BAND  # noqa: E402


def routing_figure(routing: dict, path: str | Path, title: str) -> None:
    """Left: each layer's execution rate, the token-dependent band shaded (a layer near 0
    or 1 is pruned or kept for every token). Right: tokens by number of executed layers.
    Bars take the colour the other figures give plain D-LLM decoding (`dllm`)."""
    fig, (rates_ax, hist_ax) = plt.subplots(1, 2, figsize=(10, 3.4))
    rates = routing["layer_execution_rate"]
    lo, hi = TOKEN_DEPENDENT_BAND
    rates_ax.axhspan(lo, hi, color="0.5", alpha=0.15, label="token-dependent band")
    rates_ax.bar(range(len(rates)), rates, color=colour("dllm"))
    rates_ax.set_xlabel("layer")
    rates_ax.set_ylabel("share of tokens executing it")
    rates_ax.set_ylim(0, 1.05)
    rates_ax.set_title(
        f"{routing['token_dependent_layers']} of {routing['dynamic_layers']} dynamic layers "
        "token-dependent",
        fontsize=9,
    )
    rates_ax.legend(fontsize=7, loc="lower left")
    hist = routing["executed_layers_histogram"]
    total = max(sum(hist), 1)
    hist_ax.bar(range(len(hist)), [c / total for c in hist], color=colour("dllm"))
    hist_ax.set_xlabel("layers executed by a token")
    hist_ax.set_ylabel("share of tokens")
    hist_ax.set_title(
        f"executed share {routing['executed_share']:.3f} ± {routing['token_share_std']:.3f}; "
        f"{routing['modal_set_disagreement']:.0%} off the most common layer set",
        fontsize=9,
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)
