"""The ablation table: per drafter (EAGLE head, Medusa heads), which D-LLM (plain or robust
routers) x how the tree is verified (every token votes, ATS prune, ATS steer), from the
rows of one eval run.

It separates the two savings SpaDec claims over Eagle2+D-LLM: the robust router's (the same
verification on SpaDec's D-LLM: `eagle2_dllm` -> `eagle2_dllm_robust`) and ATS's (the same
D-LLM verified by the predictor's selection: `eagle2_dllm_robust` -> `spadec_eagle2`).
"""

from __future__ import annotations

import math

import pandas as pd

from spadec.decoding.catalog import DRAFTERS, method_info, method_names, verification

ROUTERS = {"dllm_baseline": "baseline (plain routers)", "dllm": "SpaDec's (robust routers)"}
COLUMNS = {
    "model": "model",
    "bench": "bench",
    "drafter": "drafter",
    "d_llm": "D-LLM",
    "verification": "verification",
    "method": "method",
    "tau": "tau",
    "layer_load_share": "layer load",
    "executed_share": "executed layers",
    "tree_router_split_rate": "tree split rate",
    "speedup": "× ar",
    "lossless": "same output as own target",
}


def _verification(method: str, records: pd.DataFrame) -> str | None:
    """The cell of a method (`catalog.verification`): its own, or for a method run in the
    configured ATS mode, the mode its records ran."""
    cell = verification(method)
    if cell is None and "ats_mode" in records:
        modes = records["ats_mode"].dropna().unique()
        if len(modes) == 1:
            return verification(method, modes[0])
    return cell


def ablation_table(
    records: pd.DataFrame, speed: pd.DataFrame, quality: pd.DataFrame
) -> pd.DataFrame:
    """One row per (model, bench, tree method on a D-LLM) present in the run."""
    rows = []
    qual = quality.set_index(["model", "bench", "method"])
    for _, s in speed.iterrows():
        key = (s["model"], s["bench"], s["method"])
        mine = records[
            (records["model"] == key[0])
            & (records["bench"] == key[1])
            & (records["method"] == key[2])
        ]
        cell = _verification(s["method"], mine)
        if cell is None:
            continue
        target = mine["target"].iloc[0] if "target" in mine else "dllm"
        q = qual.loc[key] if key in qual.index else None
        exact = q["exact_reference"] if q is not None and "exact_reference" in q else math.nan
        split = mine.get("tree_router_split_rate")
        rows.append(
            {
                "model": key[0],
                "bench": key[1],
                "drafter": DRAFTERS[method_info(key[2]).drafter].description,
                "d_llm": ROUTERS.get(target, target),
                "verification": cell,
                "method": key[2],
                "tau": s["tau"],
                "layer_load_share": s["layer_load_share"],
                "executed_share": s["executed_share"],
                "tree_router_split_rate": split.mean() if split is not None else math.nan,
                "speedup": s["speedup"],
                "lossless": "n/a" if math.isnan(exact) else f"{exact:.0%}",
            }
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    cells = [c for m in method_names() if (c := verification(m))]
    drafters = [d.description for d in DRAFTERS.values()]
    order = {name: i for i, name in enumerate([*drafters, *ROUTERS.values(), *cells])}
    key = table[["drafter", "d_llm", "verification"]].map(lambda v: order.get(v, len(order)))
    rank = (key["drafter"] * len(order) + key["d_llm"]) * len(order) + key["verification"]
    return (
        table.assign(_rank=rank)
        .sort_values(["model", "bench", "_rank"], kind="stable")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )
