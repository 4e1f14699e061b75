"""Tables as Markdown and LaTeX (booktabs), written here so no templating package is needed."""

from __future__ import annotations

import math

import pandas as pd


def cell(value, digits: int = 2) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown(df: pd.DataFrame, digits: dict[str, int] | None = None) -> str:
    """A GitHub Markdown table; float columns rounded per `digits` (default 2)."""
    digits = digits or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = [
            cell(row[c], digits.get(c, 2)).replace("|", "\\|").replace("\n", " ") for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
    ):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace("×", r"$\times$")


def latex(df: pd.DataFrame, caption: str, label: str, digits: dict[str, int] | None = None) -> str:
    """A booktabs `table` environment (needs \\usepackage{booktabs})."""
    digits = digits or {}
    cols = list(df.columns)
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in cols)
    out = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_tex_escape(str(c)) for c in cols) + r" \\",
        r"\midrule",
    ]
    for _, row in df.iterrows():
        out.append(" & ".join(_tex_escape(cell(row[c], digits.get(c, 2))) for c in cols) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"
