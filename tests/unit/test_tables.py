"""Tables, figures and run comparison, from hand-made records with known answers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from spadec.cli import main as cli
from spadec.eval.compare import compare
from spadec.eval.publish import publish, records_digest
from spadec.eval.tables import (
    RecordsError,
    load_records,
    quality_table,
    responses_table,
    similarity,
    speedup_table,
    token_agreement,
)
from spadec.io import write_json, write_jsonl


def rec(method, pid, tokens, wall, out, model="m", bench="b", **extra):
    return {
        "model": model,
        "bench": bench,
        "method": method,
        "prompt_id": pid,
        "prompt": f"question {pid}",
        "new_tokens": tokens,
        "wall_s": wall,
        "target_forwards": tokens,
        "output_ids": out,
        "output_text": " ".join(map(str, out)),
        **extra,
    }


def hand_records():
    """ar: 10 tok/s then 5 tok/s. eagle2: 20 and 20 (ratios 2 and 4). dllm: 10 and 10
    (ratios 1 and 2). steer differs from dllm on prompt 2."""
    return [
        rec("ar", "p1", 10, 1.0, [1, 2, 3]),
        rec("ar", "p2", 20, 4.0, [4, 5, 6, 7]),
        rec("eagle2", "p1", 10, 0.5, [1, 2, 3], tau=3.0, draft_forwards=4),
        rec("eagle2", "p2", 20, 1.0, [4, 5, 6, 7], tau=2.0, draft_forwards=8),
        rec(
            "dllm",
            "p1",
            10,
            1.0,
            [1, 2, 9],
            executed_share=0.5,
            layer_load_share=0.5,
            layer_execution_rate=[1.0, 0.5, 0.0],
        ),
        rec(
            "dllm",
            "p2",
            20,
            2.0,
            [4, 5, 6, 7],
            executed_share=0.7,
            layer_load_share=0.7,
            layer_execution_rate=[1.0, 1.0, 0.1],
        ),
        rec(
            "spadec_eagle2_steer",
            "p1",
            10,
            0.25,
            [1, 2, 9],
            tau=2.5,
            layer_load_share=0.4,
            layer_execution_rate=[1.0, 0.2, 0.0],
        ),
        rec(
            "spadec_eagle2_steer",
            "p2",
            20,
            1.0,
            [4, 6, 7],
            tau=2.5,
            layer_load_share=0.2,
            layer_execution_rate=[1.0, 0.0, 0.0],
        ),
    ]


def records_file(tmp_path, records, name="records.jsonl"):
    path = tmp_path / name
    write_jsonl(path, records)
    return path


def test_speedup_both_definitions_and_spread(tmp_path):
    df = load_records([records_file(tmp_path, hand_records())])
    table = speedup_table(df).set_index("method")
    e = table.loc["eagle2"]
    assert e["speedup"] == pytest.approx(3.0)  # mean of 2 and 4
    assert e["speedup_std"] == pytest.approx(math.sqrt(2))
    assert e["speedup_ci95"] == pytest.approx(1.96 * math.sqrt(2) / math.sqrt(2))
    assert e["speedup_total"] == pytest.approx((30 / 1.5) / (30 / 5.0))
    assert e["tokens_per_s"] == pytest.approx(20.0)
    assert e["tau"] == pytest.approx(2.5)
    assert e["draft_forwards_per_token"] == pytest.approx(12 / 30)
    assert e["layer_load_share"] == 1.0  # dense: every layer
    d = table.loc["dllm"]
    assert d["speedup"] == pytest.approx(1.5) and d["layer_load_share"] == pytest.approx(0.6)
    assert table.loc["ar"]["speedup"] == pytest.approx(1.0)
    assert table.loc["ar"]["speedup_std"] == pytest.approx(0.0)
    assert list(table.index) == ["ar", "dllm", "eagle2", "spadec_eagle2_steer"]


def test_speedups_pair_by_model_and_bench(tmp_path):
    other = [
        {**r, "bench": "c", "wall_s": r["wall_s"] * (2 if r["method"] == "ar" else 1)}
        for r in hand_records()
    ]
    df = load_records([records_file(tmp_path, hand_records() + other)])
    table = speedup_table(df).set_index(["bench", "method"])
    assert table.loc[("b", "eagle2")]["speedup"] == pytest.approx(3.0)
    assert table.loc[("c", "eagle2")]["speedup"] == pytest.approx(6.0)


def test_old_records_per_layer_load_reads_under_the_one_name(tmp_path):
    old = hand_records()
    for r in old:
        if r["method"] == "spadec_eagle2_steer":  # a tree method's record before the rename
            r["layer_load_per_layer"] = r.pop("layer_execution_rate")
    df = load_records([records_file(tmp_path, old)])
    assert "layer_load_per_layer" not in df
    steer = df[df["method"] == "spadec_eagle2_steer"]["layer_execution_rate"]
    assert steer.tolist() == [[1.0, 0.2, 0.0], [1.0, 0.0, 0.0]]
    assert df[df["method"] == "dllm"]["layer_execution_rate"].tolist()[0] == [1.0, 0.5, 0.0]


def test_bad_records_fail_with_a_message(tmp_path):
    no_ar = [r for r in hand_records() if r["method"] != "ar"]
    with pytest.raises(RecordsError, match="ar"):
        speedup_table(load_records([records_file(tmp_path, no_ar)]))
    broken = hand_records()
    del broken[3]["wall_s"]
    path = records_file(tmp_path, broken, "broken.jsonl")
    with pytest.raises(RecordsError, match=r"broken.jsonl: record 4 lacks wall_s"):
        load_records([path])
    dup = hand_records() + [hand_records()[0]]
    with pytest.raises(RecordsError, match="duplicate record for m/b/ar prompt p1"):
        load_records([records_file(tmp_path, dup, "dup.jsonl")])
    with pytest.raises(RecordsError, match="not found"):
        load_records([tmp_path / "nowhere"])


def test_agreement_measures():
    assert token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_agreement([1, 2, 3], [1, 2, 4, 5]) == pytest.approx(2 / 4)
    assert token_agreement([], []) == 1.0
    # a one-token shift: position-wise agreement collapses, the similarity does not
    assert token_agreement([9, 1, 2, 3], [1, 2, 3]) == 0.0
    assert similarity([9, 1, 2, 3], [1, 2, 3]) == pytest.approx(2 * 3 / 7)


def test_quality_against_ar_and_the_own_target(tmp_path):
    df = load_records([records_file(tmp_path, hand_records())])
    q = quality_table(df).set_index("method")
    assert q.loc["eagle2"]["exact_ar"] == 1.0 and q.loc["eagle2"]["reference"] == "ar"
    assert q.loc["dllm"]["exact_ar"] == 0.5
    assert q.loc["dllm"]["token_agreement_ar"] == pytest.approx((2 / 3 + 1) / 2)
    steer = q.loc["spadec_eagle2_steer"]
    assert steer["reference"] == "dllm"
    assert steer["exact_reference"] == 0.5  # p1 equals dllm's, p2 does not
    assert steer["token_agreement_reference"] == pytest.approx((1 + 1 / 4) / 2)
    assert steer["similarity_reference"] == pytest.approx((1 + 2 * 3 / 7) / 2)


def test_the_reference_is_the_plain_method_on_the_same_target(tmp_path):
    """Records name their target: with a baseline D-LLM, eagle2_dllm's reference is dllm
    and spadec_eagle2's dllm_robust; records without a target ran one D-LLM."""
    records = [
        rec("ar", "p1", 4, 1.0, [1, 2], target="dense"),
        rec("dllm", "p1", 4, 1.0, [1, 3], target="dllm_baseline"),
        rec("dllm_robust", "p1", 4, 1.0, [1, 4], target="dllm"),
        rec("eagle2_dllm", "p1", 4, 0.5, [1, 3], tau=2.0, target="dllm_baseline"),
        rec("spadec_eagle2", "p1", 4, 0.5, [1, 4], tau=2.0, target="dllm"),
    ]
    q = quality_table(load_records([records_file(tmp_path, records)])).set_index("method")
    assert q.loc["eagle2_dllm", "reference"] == "dllm"
    assert q.loc["spadec_eagle2", "reference"] == "dllm_robust"
    assert (q.loc[["eagle2_dllm", "spadec_eagle2"], "exact_reference"] == 1.0).all()
    assert q.loc["spadec_eagle2", "exact_ar"] == 0.0
    speed = speedup_table(load_records([records_file(tmp_path, records)])).set_index("method")
    assert speed.loc["dllm_robust", "tau"] == 1.0  # a plain method: one token per forward
    old = [
        {k: v for k, v in r.items() if k != "target"}
        for r in records
        if r["method"] != "dllm_robust"
    ]
    q = quality_table(load_records([records_file(tmp_path, old)])).set_index("method")
    assert q.loc["spadec_eagle2", "reference"] == "dllm"


def test_responses_table_shows_ar_next_to_spadec(tmp_path):
    records = hand_records() + [
        rec("spadec_eagle2", pid, 3, 1.0, [1], tau=1.0) for pid in ("p1", "p2")
    ]
    df = load_records([records_file(tmp_path, records)])
    table = responses_table(df, 1)
    assert len(table) == 1
    assert list(table.iloc[0]) == ["m", "b", "question p1", "1 2 3", "1"]
    assert responses_table(df, 0).empty


def test_publish_writes_every_table_and_figure(tmp_path):
    evals = tmp_path / "m" / "eval" / "b"
    evals.mkdir(parents=True)
    write_jsonl(evals / "records.jsonl", hand_records())
    tables = publish([evals], tmp_path / "tables", tmp_path / "figures", examples=2)
    out = tmp_path / "tables"
    csv = pd.read_csv(out / "speedup.csv")
    assert set(csv["method"]) == {"ar", "dllm", "eagle2", "spadec_eagle2_steer"}
    assert csv.set_index("method").loc["eagle2", "speedup"] == pytest.approx(3.0)
    md = (out / "speedup.md").read_text()
    assert "| m | b | 1.00× | 1.50× | 3.00× |" in md  # the paper's models × methods layout
    tex = (out / "speedup.tex").read_text()
    assert r"\toprule" in tex and r"spadec\_eagle2\_steer" in tex
    assert pd.read_csv(out / "quality.csv").shape[0] == 4
    assert "question p1" in (out / "responses.md").read_text() or tables["responses"].empty
    for name in ("speedup.png", "quality.png", "layer_load.png"):
        data = (tmp_path / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    digest = records_digest(evals)
    assert digest["records"] == len(hand_records()) and len(digest["sha256"]) == 64


def _run_root(tmp_path, name, speedup, lr):
    root = tmp_path / name
    (root / "tables").mkdir(parents=True)
    table = pd.DataFrame(
        [
            {"model": "m", "bench": "b", "method": "ar", "speedup": 1.0, "tau": 1.0},
            {"model": "m", "bench": "b", "method": "eagle2", "speedup": speedup, "tau": 3.0},
        ]
    )
    table.to_csv(root / "tables" / "speedup.csv", index=False)
    write_json(root / "m" / "config" / "eagle.train.json", {"lr": lr, "epochs": 10})
    return root


def test_compare_two_runs(tmp_path, capsys):
    a = _run_root(tmp_path, "a", 1.5, 1e-3)
    b = _run_root(tmp_path, "b", 2.25, 5e-4)
    text = compare(a, b)
    assert "| m | b | eagle2 | 1.50 | 2.25 | 3.00 | 3.00 |" in text
    assert "| m | eagle.train.lr | 0.001 | 0.0005 |" in text
    assert "epochs" not in text  # equal settings are not listed
    assert cli(["compare", str(a), str(b)]) == 0
    assert "Settings that differ (1)" in capsys.readouterr().out
    assert cli(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "tables/speedup.csv: not found" in capsys.readouterr().err


def test_compare_identical_settings(tmp_path):
    a = _run_root(tmp_path, "a", 1.5, 1e-3)
    assert "No differences" in compare(a, a)
    assert json.loads((a / "m" / "config" / "eagle.train.json").read_text())["lr"] == 1e-3


def test_ablation_crosses_router_and_verification(tmp_path):
    """Two D-LLMs x (all tokens vote, ATS prune, ATS steer), from hand-made records."""
    from spadec.eval.ablation import ablation_table

    base = dict(tau=3.0, executed_share=0.75)
    records = [
        rec("ar", "p1", 10, 1.0, [1, 2]),
        rec("dllm", "p1", 10, 1.0, [1, 2], target="dllm_baseline"),
        rec("dllm_robust", "p1", 10, 1.0, [1, 3], target="dllm"),
        rec(
            "eagle2_dllm",
            "p1",
            10,
            0.5,
            [1, 2],
            target="dllm_baseline",
            layer_load_share=0.9,
            tree_router_split_rate=0.4,
            **base,
        ),
        rec(
            "eagle2_dllm_robust",
            "p1",
            10,
            0.4,
            [1, 3],
            target="dllm",
            layer_load_share=0.85,
            tree_router_split_rate=0.2,
            **base,
        ),
        rec(
            "spadec_eagle2",
            "p1",
            10,
            0.25,
            [1, 3],
            target="dllm",
            ats_mode="prune",
            layer_load_share=0.8,
            **base,
        ),
        rec(
            "spadec_eagle2_steer",
            "p1",
            10,
            0.2,
            [1, 4],
            target="dllm",
            ats_mode="steer",
            layer_load_share=0.75,
            **base,
        ),
    ]
    df = load_records([records_file(tmp_path, records)])
    table = ablation_table(df, speedup_table(df), quality_table(df)).set_index("method")
    # the baseline D-LLM first; then all tokens vote, ATS prune, ATS steer
    assert list(table.index) == [
        "eagle2_dllm",
        "eagle2_dllm_robust",
        "spadec_eagle2",
        "spadec_eagle2_steer",
    ]
    assert table.loc["eagle2_dllm", "d_llm"] == "baseline (plain routers)"
    assert table.loc["eagle2_dllm_robust", "d_llm"] == "SpaDec's (robust routers)"
    assert table.loc["spadec_eagle2", "verification"] == "ATS prune"  # the mode it ran
    assert table.loc["spadec_eagle2_steer", "verification"] == "ATS steer"
    assert table.loc["eagle2_dllm_robust", "layer_load_share"] == pytest.approx(0.85)
    assert table.loc["eagle2_dllm", "tree_router_split_rate"] == pytest.approx(0.4)
    assert table.loc["spadec_eagle2", "speedup"] == pytest.approx(4.0)
    # lossless against each one's own target's plain decoding
    assert table.loc["spadec_eagle2", "lossless"] == "100%"
    assert table.loc["spadec_eagle2_steer", "lossless"] == "0%"
    # plain and dense methods are not part of it
    assert {"ar", "dllm", "dllm_robust"}.isdisjoint(table.index)
