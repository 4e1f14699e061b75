"""Two runs side by side: their speedup tables joined on (model, bench, method), and the
differences between their resolved stage settings (results/<model>/config/*.json).

A run is a results root as the workflow writes it (`results/`) or as a reference run is
committed (`results/reference/smollm2-135m/`): tables/speedup.csv plus <model>/config/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spadec.eval.formats import markdown
from spadec.io import read_json

SHOWN = ("speedup", "speedup_total", "tau", "layer_load_share", "tokens_per_s")


class CompareError(ValueError):
    """A results root lacks what a comparison needs."""


def read_speedups(root: str | Path) -> pd.DataFrame:
    path = Path(root) / "tables" / "speedup.csv"
    if not path.is_file():
        raise CompareError(f"{path}: not found (run the `tables` rule for {root} first)")
    return pd.read_csv(path)


def read_settings(root: str | Path) -> dict[str, dict]:
    """{model: {"<stage>.<key>": value}} flattened from every resolved settings file."""
    out: dict[str, dict] = {}
    for path in sorted(Path(root).glob("*/config/*.json")):
        model, stage = path.parts[-3], path.stem
        flat = out.setdefault(model, {})
        _flatten(read_json(path), stage, flat)
    return out


def _flatten(obj, prefix: str, into: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}", into)
    else:
        into[prefix] = obj


def joined_speedups(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """Outer join on (model, bench, method): each shown column once per run."""
    key = ["model", "bench", "method"]
    cols = [c for c in SHOWN if c in a and c in b]
    out = a[key + cols].merge(
        b[key + cols], on=key, how="outer", suffixes=(f" {names[0]}", f" {names[1]}")
    )
    return out[key + [f"{c} {n}" for c in cols for n in names]]


def settings_diff(a: dict[str, dict], b: dict[str, dict], names: tuple[str, str]) -> pd.DataFrame:
    """Settings that differ. Models are paired by name; a lone model on each side (e.g. tiny
    vs smollm2-135m) is paired with the other."""
    pairs = [(m, m) for m in a if m in b]
    if not pairs and len(a) == 1 and len(b) == 1:
        pairs = [(next(iter(a)), next(iter(b)))]
    rows = []
    for ma, mb in pairs:
        for key in sorted(set(a[ma]) | set(b[mb])):
            va, vb = a[ma].get(key, "—"), b[mb].get(key, "—")
            if va != vb:
                model = ma if ma == mb else f"{ma} / {mb}"
                rows.append({"model": model, "setting": key, names[0]: va, names[1]: vb})
    return pd.DataFrame(rows, columns=["model", "setting", *names])


def compare(root_a: str | Path, root_b: str | Path) -> str:
    """A Markdown report: speedup tables side by side, then the settings that differ."""
    names = ("A", "B")
    table = joined_speedups(read_speedups(root_a), read_speedups(root_b), names)
    diff = settings_diff(read_settings(root_a), read_settings(root_b), names)
    head = f"A = {root_a}\nB = {root_b}\n\n"
    body = "## Speedup tables side by side\n\n" + markdown(
        table, {"tokens_per_s A": 1, "tokens_per_s B": 1}
    )
    if diff.empty:
        body += "\n## Settings\n\nNo differences in the resolved stage settings.\n"
    else:
        diff = diff.astype({names[0]: str, names[1]: str})
        body += f"\n## Settings that differ ({len(diff)})\n\n" + markdown(diff)
    return head + body
