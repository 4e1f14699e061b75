"""The paper's tables, computed from eval_speed's per-turn records alone.

Speedup is against `ar` on the same model, benchmark and prompt, in two definitions:
the mean of per-prompt ratios of tokens/s (the paper's, with its standard deviation and a
95 % interval of the mean) and the ratio of total tokens/s (long answers weigh more).
Quality is agreement with `ar` (exact output, position-wise token agreement, and a
token-sequence similarity for lossy methods) and with the method's own lossless
reference: plain decoding of the same target (`ar` for dense methods, `dllm` for the
baseline D-LLM's, `dllm_robust` for SpaDec's; `spadec.decoding.catalog`), which greedy
speculative decoding must reproduce exactly.

Peers (`hf_generate`, `hf_prompt_lookup`: transformers' own decoders on the dense target,
timed in the same run) are reference rows: each row also gives the method's speedup over
each peer present (`speedup_vs_<peer>`, mean of per-prompt ratios), so every speedup is
read against what a user would run instead, and whether its output equals `ar`'s.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from spadec.decoding.catalog import (
    BASELINE,
    SHOWCASE,
    default_target,
    is_peer,
    is_plain,
    on_dense,
    peers,
    rank,
    references,
)
from spadec.decoding.timing import PARTS
from spadec.eval.speed import summarize
from spadec.io import read_jsonl

KEY = ["model", "bench", "method"]
# per-record memory figures (spadec.eval.memory), averaged over a method's prompts
MEMORY_COLUMNS = ("weight_mb_per_token", "resident_weight_mb", "kv_cache_mb")
REQUIRED = ("model", "bench", "method", "prompt_id", "new_tokens", "wall_s", "output_ids")
# per layer, the share of target forwards that ran it; tree methods' records before the
# rename call it OLD_RATE
LAYER_RATE, OLD_RATE = "layer_execution_rate", "layer_load_per_layer"


class RecordsError(ValueError):
    """Records are missing, malformed or lack the `ar` baseline."""


def reference_methods(group: pd.DataFrame) -> dict[str, str | None]:
    """method -> its lossless reference among one model's records on one benchmark: the
    plain method on the same target (records name it; older ones ran one D-LLM)."""
    pairs = group.drop_duplicates("method")
    if "target" in pairs:
        targets = {
            m: t if isinstance(t, str) else default_target(m)
            for m, t in zip(pairs["method"], pairs["target"], strict=True)
        }
    else:
        targets = {m: default_target(m) for m in pairs["method"]}
    return references(targets)


def load_records(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All per-turn records of the given records.jsonl files (or eval directories)."""
    rows = []
    for p in paths:
        p = Path(p)
        path = p / "records.jsonl" if p.is_dir() else p
        if not path.is_file():
            raise RecordsError(f"{path}: records file not found")
        recs = read_jsonl(path)
        for i, r in enumerate(recs):
            missing = [k for k in REQUIRED if k not in r]
            if missing:
                raise RecordsError(f"{path}: record {i + 1} lacks {', '.join(missing)}")
        rows.extend(recs)
    if not rows:
        raise RecordsError("no records to tabulate")
    df = pd.DataFrame(rows)
    dup = df.duplicated(["model", "bench", "method", "prompt_id"])
    if dup.any():
        first = df[dup].iloc[0]
        raise RecordsError(
            f"duplicate record for {first['model']}/{first['bench']}/{first['method']}"
            f" prompt {first['prompt_id']}"
        )
    if OLD_RATE in df:  # records written before both decoders named the per-layer load alike
        old = df.pop(OLD_RATE)
        df[LAYER_RATE] = (
            df[LAYER_RATE].where(df[LAYER_RATE].notna(), old) if LAYER_RATE in df else old
        )
    df["tokens_per_s"] = df["new_tokens"] / df["wall_s"]
    return df


def _order(df: pd.DataFrame) -> pd.DataFrame:
    key = df["method"].map(rank)
    return (
        df.assign(_rank=key)
        .sort_values(["model", "bench", "_rank", "method"])
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, bench, method): speedups vs ar (both definitions, spread),
    tokens/s, tau, layer shares, forwards per token, share of outputs equal to ar's."""
    ar = df[df["method"] == BASELINE][["model", "bench", "prompt_id", "new_tokens", "wall_s"]]
    if ar.empty:
        raise RecordsError(f"no `{BASELINE}` records: speedups are measured against {BASELINE}")
    missing = set(map(tuple, df[KEY[:2]].drop_duplicates().values)) - set(
        map(tuple, ar[KEY[:2]].drop_duplicates().values)
    )
    if missing:
        raise RecordsError(f"no `{BASELINE}` records for {sorted(missing)}")
    rows = []
    for (model, bench), group in df.groupby(KEY[:2], sort=False):
        # the ratios themselves are spadec.eval.speed.summarize's (one definition)
        present = _present(group)
        summary = summarize(
            present, {m: BASELINE for m in group["method"].unique() if m != BASELINE}
        )
        methods = group["method"].unique()
        vs_peer = {
            peer: summarize(present, {m: peer for m in methods if m != peer})
            for peer in peers()
            if peer in methods
        }
        for method, g in group.groupby("method", sort=False):
            s = summary[method]
            n, std = s["prompts"], s.get("speedup_std", 0.0)
            tokens = g["new_tokens"].sum()
            row = {
                "model": model,
                "bench": bench,
                "method": method,
                "prompts": n,
                "tokens_per_s": s["tokens_per_s"],
                "speedup": s.get("speedup_mean_of_ratios", 1.0),
                "speedup_std": std,
                "speedup_ci95": 1.96 * std / math.sqrt(n),
                "speedup_total": s.get("speedup_ratio_of_totals", 1.0),
                "peer": is_peer(method),
                "same_output_as_ar": s.get("same_output_as_baseline", 1.0),
                "new_tokens": int(tokens),
                "target_forwards_per_token": g["target_forwards"].sum() / tokens
                if "target_forwards" in g
                else math.nan,
            }
            row["tau"] = _mean_or(g, "tau", 1.0 if is_plain(method) else math.nan)
            dense = on_dense(method)
            row["executed_share"] = _mean_or(g, "executed_share", 1.0 if dense else math.nan)
            row["layer_load_share"] = _mean_or(g, "layer_load_share", 1.0 if dense else math.nan)
            for col in MEMORY_COLUMNS:  # records from before the memory figures: NaN
                row[col] = _mean_or(g, col, math.nan)
            if "draft_forwards" in g and g["draft_forwards"].notna().any():
                row["draft_forwards_per_token"] = g["draft_forwards"].sum() / tokens
            else:
                row["draft_forwards_per_token"] = 0.0 if is_plain(method) else math.nan
            timing = s.get("timing")  # where the time went (tree methods, if recorded)
            for part in (*PARTS, "host") if timing else ():
                row[f"time_share_{part}"] = timing["shares"].get(part, math.nan)
            for peer, vs in vs_peer.items():  # in catalog order
                row[f"speedup_vs_{peer}"] = vs[method].get("speedup_mean_of_ratios", 1.0)
            rows.append(row)
    return _order(pd.DataFrame(rows))


def _present(df: pd.DataFrame) -> list[dict]:
    """Records as dicts without the columns a record did not have (NaN in the frame)."""
    return [
        {k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
        for r in df.to_dict("records")
    ]


def _mean_or(g: pd.DataFrame, col: str, default: float) -> float:
    if col in g and g[col].notna().any():
        return float(g[col].mean())
    return default


def token_agreement(a: list[int], b: list[int]) -> float:
    """Share of positions with the same token, over the longer output (1.0 = identical)."""
    n = max(len(a), len(b))
    if n == 0:
        return 1.0
    return sum(x == y for x, y in zip(a, b, strict=False)) / n


def similarity(a: list[int], b: list[int]) -> float:
    """Token-sequence similarity 2·M/(|a|+|b|), M = matched tokens of the longest
    matching blocks (difflib): tolerant to shifts, unlike position-wise agreement."""
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def quality_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, bench, method): agreement with ar and with the lossless reference."""
    rows = []
    base = df[["model", "bench", "prompt_id", "method", "output_ids"]]
    refs = {key: reference_methods(g) for key, g in df.groupby(KEY[:2], sort=False)}
    for (model, bench, method), g in df.groupby(KEY, sort=False):
        row = {"model": model, "bench": bench, "method": method, "prompts": len(g)}
        reference = refs[(model, bench)][method]
        for name, ref in (("ar", BASELINE), ("reference", reference)):
            if ref is None:
                continue
            other = base[
                (base["method"] == ref) & (base["model"] == model) & (base["bench"] == bench)
            ]
            pair = g.merge(other, on=["model", "bench", "prompt_id"], suffixes=("", "_ref"))
            if pair.empty:
                continue
            a, b = pair["output_ids"], pair["output_ids_ref"]
            row[f"exact_{name}"] = float((a == b).mean())
            row[f"token_agreement_{name}"] = float(
                sum(token_agreement(x, y) for x, y in zip(a, b, strict=True)) / len(pair)
            )
            row[f"similarity_{name}"] = float(
                sum(similarity(x, y) for x, y in zip(a, b, strict=True)) / len(pair)
            )
        row["reference"] = reference
        rows.append(row)
    return _order(pd.DataFrame(rows))


def responses_table(df: pd.DataFrame, examples: int, method: str = SHOWCASE) -> pd.DataFrame:
    """The paper's example figure: prompt, the baseline's (ar's) answer and `method`'s
    answer, side by side."""
    if examples <= 0 or "output_text" not in df:
        return pd.DataFrame(columns=["model", "bench", "prompt", "ar", method])
    rows = []
    for (model, bench), g in df.groupby(["model", "bench"], sort=True):
        ar = g[g["method"] == BASELINE].set_index("prompt_id")
        other = g[g["method"] == method].set_index("prompt_id")
        for pid in [p for p in ar.index if p in other.index][:examples]:
            rows.append(
                {
                    "model": model,
                    "bench": bench,
                    "prompt": ar.at[pid, "prompt"] if "prompt" in ar else pid,
                    "ar": ar.at[pid, "output_text"],
                    method: other.at[pid, "output_text"],
                }
            )
    return pd.DataFrame(rows, columns=["model", "bench", "prompt", "ar", method])
