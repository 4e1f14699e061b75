"""Figures of the tables: grouped speedup bars (the paper's figure), quality bars, and the
per-layer load of the D-LLM methods (where SpaDec's saving shows, or does not)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from spadec.decoding.catalog import (  # noqa: E402
    BASELINE,
    colour,
    is_peer,
    label,
    on_dense,
    rank,
)
from spadec.eval.tables import LAYER_RATE  # noqa: E402


def _groups(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(df["model"], df["bench"], strict=True)))


def _grouped_bars(ax, df: pd.DataFrame, value: str, methods: list[str], err: str | None = None):
    groups = _groups(df)
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        sub = df[df["method"] == method].set_index(["model", "bench"])
        xs, ys, es = [], [], []
        for gi, g in enumerate(groups):
            if g in sub.index:
                xs.append(gi + (i - (len(methods) - 1) / 2) * width)
                ys.append(float(sub.at[g, value]))
                es.append(float(sub.at[g, err]) if err else 0.0)
        bars = ax.bar(
            xs,
            ys,
            width,
            label=label(method),
            color=colour(method),
            yerr=es if err else None,
            capsize=2,
            # peers (someone else's decoder, a reference row) are hatched
            hatch="//" if is_peer(method) else None,
            edgecolor="dimgray" if is_peer(method) else None,
        )
        # values inside the bars: above them sit the error bars
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, label_type="center")
    ax.set_xticks(range(len(groups)), [f"{m}\n{b}" for m, b in groups])


def speedup_figure(speedups: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars: (model, benchmark) groups × methods, speedup over ar (mean of per-prompt
    ratios, error bar = its standard deviation), values on the bars."""
    methods = [m for m in dict.fromkeys(speedups["method"]) if m != BASELINE]
    groups = _groups(speedups)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 + 0.55 * len(methods) * len(groups)), 4.6))
    _grouped_bars(ax, speedups, "speedup", methods, err="speedup_std")
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_ylabel("speedup over AR (×)")
    ax.set_title("Decoding speedup over autoregressive decoding")
    ax.legend(
        fontsize=8, ncol=min(len(methods), 6), loc="upper center", bbox_to_anchor=(0.5, -0.18)
    )
    top = (speedups["speedup"] + speedups["speedup_std"].fillna(0)).max()
    ax.set_ylim(0, max(1.2, float(top) * 1.1))
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def quality_figure(quality: pd.DataFrame, path: str | Path) -> None:
    """Per method: position-wise token agreement with ar and with its lossless reference."""
    groups = _groups(quality)
    methods = [m for m in dict.fromkeys(quality["method"]) if m != BASELINE]
    width = max(3.5, 0.45 * len(methods) * len(groups) + 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 4.0), sharey=True)
    for ax, col, title in (
        (axes[0], "token_agreement_ar", "token agreement with AR"),
        (axes[1], "token_agreement_reference", "with its own target (lossless: 1)"),
    ):
        _grouped_bars(ax, quality.fillna({col: 0.0}), col, methods)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(len(methods), 6))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def layer_load_figure(records: pd.DataFrame, path: str | Path) -> None:
    """Per model: share of target forwards that used each layer's weights, for the D-LLM
    methods (plain D-LLM decoding: its per-token execution rate)."""
    models = list(dict.fromkeys(records["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sub = records[records["model"] == model]
        # distinct line styles, markers shrinking in drawing order: identical curves (the
        # same layers skipped) stay visible
        methods = [m for m in sorted(dict.fromkeys(sub["method"]), key=rank) if not on_dense(m)]
        lines = itertools.cycle(["-", "--", ":", "-."])
        sizes = [max(2.0, 9 - 7 * i / max(1, len(methods) - 1)) for i in range(len(methods))]
        styles = iter(zip(lines, sizes, strict=False))
        for method in methods:
            rows = sub[sub["method"] == method]
            if LAYER_RATE not in rows or rows[LAYER_RATE].isna().all():
                continue
            per_layer = pd.DataFrame(rows[LAYER_RATE].dropna().tolist()).mean(0)
            style, size = next(styles)
            ax.plot(
                per_layer.index,
                per_layer.values,
                linestyle=style,
                marker="o",
                ms=size,
                label=label(method),
                color=colour(method),
            )
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("share of forwards using the layer")
        ax.set_ylim(-0.05, 1.05)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)
