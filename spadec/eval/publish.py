"""Write every table and figure of a run from its per-turn records.

results/tables/speedup.{csv,md,tex}   speedup vs ar (mean of ratios ± std, ratio of totals),
                                      vs each peer (HF generate, HF prompt lookup), tau,
                                      layer shares, tokens/s, same output as ar; the paper's
                                      models × methods matrix first in .md/.tex
results/tables/quality.{csv,md,tex}   agreement with ar and with each method's lossless reference
results/tables/responses.md           prompt, ar's answer, spadec_eagle2's answer
results/tables/ablation.{csv,md}      D-LLM (plain / robust routers) x verification (all
                                      tokens vote / ATS prune / ATS steer): tau, layer load,
                                      executed share, tree split rate, speedup, lossless
results/figures/speedup.png           grouped bars like the paper's figure
results/figures/quality.png           token agreement bars
results/figures/layer_load.png        per-layer load of the D-LLM methods
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from spadec.decoding.catalog import label, peers
from spadec.eval.ablation import COLUMNS as ABLATION_COLUMNS
from spadec.eval.ablation import ablation_table
from spadec.eval.figures import layer_load_figure, quality_figure, speedup_figure
from spadec.eval.formats import latex, markdown
from spadec.eval.tables import load_records, quality_table, responses_table, speedup_table
from spadec.io import atomic_path, write_text

SPEEDUP_COLUMNS = {
    "model": "model",
    "bench": "bench",
    "method": "method",
    "prompts": "prompts",
    "speedup": "speedup (mean of ratios)",
    "speedup_std": "± std",
    "speedup_total": "speedup (ratio of totals)",
    **{f"speedup_vs_{p}": f"× {label(p).replace(' (peer)', '')}" for p in peers()},
    "tokens_per_s": "tokens/s",
    "tau": "tau",
    "layer_load_share": "layer load",
    "executed_share": "executed layers",
    "weight_mb_per_token": "weight MB read / token",
    "resident_weight_mb": "weights MB",
    "kv_cache_mb": "K/V MB",
    "same_output_as_ar": "same output as ar",
}
PEER_NOTE = (
    "Rows marked (peer) are reference rows, not our methods: transformers' `generate`"
    " (greedy) and its prompt-lookup decoding on the dense target, timed in the same run on"
    " the same prompts. The × HF columns give every method's speedup over them (mean of"
    " per-prompt ratios).\n"
)
QUALITY_COLUMNS = {
    "model": "model",
    "bench": "bench",
    "method": "method",
    "exact_ar": "same output as ar",
    "token_agreement_ar": "token agreement with ar",
    "similarity_ar": "similarity to ar",
    "reference": "own target",
    "exact_reference": "same output as own target",
}


def speedup_matrix(speedups: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per model (and benchmark), one column per method."""
    cells = speedups.assign(
        cell=speedups["speedup"].map(lambda v: f"{v:.2f}×"),
        column=speedups["method"].map(label),
    )
    wide = cells.pivot(index=["model", "bench"], columns="column", values="cell")
    order = [label(m) for m in dict.fromkeys(speedups["method"])]
    return wide[order].reset_index()


def _view(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    return df[[c for c in columns if c in df]].rename(columns=columns)


def publish(
    records: Iterable[str | Path], tables_dir: str | Path, figures_dir: str | Path, examples: int
) -> dict[str, pd.DataFrame]:
    """Compute the tables from `records` (records.jsonl files or eval directories) and write
    them, and the figures, atomically file by file."""
    df = load_records(records)
    speed, quality = speedup_table(df), quality_table(df)
    responses = responses_table(df, examples)
    tables, figures = Path(tables_dir), Path(figures_dir)
    tables.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)

    matrix = speedup_matrix(speed)
    detail = _view(speed, SPEEDUP_COLUMNS)
    qual = _view(quality, QUALITY_COLUMNS)
    write_text(tables / "speedup.csv", speed.to_csv(index=False))
    write_text(
        tables / "speedup.md",
        "## Speedup over AR (mean of per-prompt ratios)\n\n"
        + markdown(matrix)
        + ("\n" + PEER_NOTE if speed["peer"].any() else "")
        + "\n## Details\n\n"
        + markdown(detail, {"tokens_per_s": 1, "layer load": 3, "executed layers": 3}),
    )
    write_text(
        tables / "speedup.tex",
        latex(
            matrix,
            "Speedup over autoregressive decoding (mean of per-prompt ratios).",
            "tab:speedup",
        )
        + latex(detail, "Speedup, tau and layer shares per method.", "tab:speedup-detail"),
    )
    write_text(tables / "quality.csv", quality.to_csv(index=False))
    write_text(tables / "quality.md", markdown(qual, {c: 3 for c in qual.columns}))
    write_text(
        tables / "quality.tex",
        latex(
            qual,
            "Agreement with AR and with each method's own target.",
            "tab:quality",
            {c: 3 for c in qual.columns},
        ),
    )
    write_text(tables / "responses.md", "# Example responses\n\n" + markdown(responses))
    ablation = ablation_table(df, speed, quality)
    write_text(tables / "ablation.csv", ablation.to_csv(index=False))
    write_text(
        tables / "ablation.md",
        "## Ablation: router input x verification\n\n"
        + (
            markdown(_view(ablation, ABLATION_COLUMNS), {"layer load": 3, "executed layers": 3})
            if not ablation.empty
            else "No tree method on a D-LLM in this run.\n"
        ),
    )
    for name, draw, data in (
        ("speedup.png", speedup_figure, speed),
        ("quality.png", quality_figure, quality),
        ("layer_load.png", layer_load_figure, df),
    ):
        with atomic_path(figures / name) as tmp:
            draw(data, tmp)
    return {"speedup": speed, "quality": quality, "responses": responses, "ablation": ablation}


def records_digest(eval_dir: str | Path) -> dict:
    """Which records a table was computed from: path, line count and SHA-256."""
    path = Path(eval_dir)
    path = path / "records.jsonl" if path.is_dir() else path
    data = path.read_bytes()
    return {
        "path": str(path),
        "records": data.count(b"\n"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
