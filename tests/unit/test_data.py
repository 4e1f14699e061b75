"""Datasets: the offline corpus, splits without leakage, external formats, error messages."""

from __future__ import annotations

import json

import pytest

from spadec.data import formats
from spadec.data.prepare import prepare_data
from spadec.data.sources import DataSourceError, load_eval, load_instructions
from spadec.data.split import split_by_document
from spadec.data.stdlib_docs import iter_stdlib_documents, iter_stdlib_records
from spadec.io import read_jsonl
from tests.conftest import REPO

PROMPTS = REPO / "data" / "prompts"


def test_stdlib_corpus_is_real_and_offline():
    records = list(iter_stdlib_records(max_response_chars=300))
    assert len(records) > 3000
    kinds = {r["kind"] for r in records}
    assert {"topic", "module", "function", "class", "method"} <= kinds
    ids = [r["id"] for r in records]
    assert len(set(ids)) > 0.95 * len(ids)
    rec = next(r for r in records if r["id"] == "function:json.dumps")
    assert "json.dumps" in rec["instruction"] and "JSON" in rec["response"]
    # Topic answers are the capped text itself; the others add a name/signature prefix.
    assert all(len(r["response"]) <= 300 for r in records if r["kind"] == "topic")
    docs = list(iter_stdlib_documents())
    assert {d["doc_id"] for d in docs} >= {"topic:assert", "module:json"}


def test_split_keeps_documents_whole_and_is_deterministic():
    records = list(iter_stdlib_records())[:2000]
    train, heldout = split_by_document(records, 0.2, seed=3)
    assert {r["doc_id"] for r in train}.isdisjoint({r["doc_id"] for r in heldout})
    again = split_by_document(list(reversed(records)), 0.2, seed=3)
    assert {r["id"] for r in again[1]} == {r["id"] for r in heldout}
    other_seed = split_by_document(records, 0.2, seed=4)[1]
    assert {r["id"] for r in other_seed} != {r["id"] for r in heldout}


def test_split_refuses_a_degenerate_result():
    one_doc = [{"id": str(i), "doc_id": "only"} for i in range(10)]
    with pytest.raises(ValueError, match="empty"):
        split_by_document(one_doc, 0.5, seed=0)
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_by_document(one_doc, 1.5, seed=0)


def test_prepare_data_writes_every_file_without_leakage(micro_data):
    sft = read_jsonl(micro_data / "sft.jsonl")
    held = read_jsonl(micro_data / "sft_heldout.jsonl")
    corpus_train = read_jsonl(micro_data / "corpus_train.jsonl")
    corpus_held = read_jsonl(micro_data / "corpus_heldout.jsonl")
    held_docs = {r["doc_id"] for r in held}
    assert sft and held and corpus_train and corpus_held
    assert held_docs.isdisjoint(r["doc_id"] for r in sft)
    assert held_docs.isdisjoint(d["doc_id"] for d in corpus_train)
    assert {d["doc_id"] for d in corpus_held} <= held_docs
    # Held-out text never appears in the training corpus.
    train_text = "\n".join(d["text"] for d in corpus_train)
    assert not any(r["response"][:80] in train_text for r in held if len(r["response"]) > 80)
    evals = read_jsonl(micro_data / "eval_heldout.jsonl")
    assert len(evals) == 2 and {e["id"] for e in evals} <= {r["id"] for r in held}
    distill = read_jsonl(micro_data / "distill_prompts.jsonl")
    assert len(distill) == 16 and {d["id"] for d in distill} <= {r["id"] for r in sft}
    metrics = json.loads((micro_data / "metrics.json").read_text())
    assert metrics["leaked_documents"] == 0 and metrics["sft_train"] == len(sft)


def test_project_prompt_set_has_eight_categories():
    records = load_eval({"source": "project_prompts"}, PROMPTS, [])
    cats = {}
    for r in records:
        cats.setdefault(r["category"], []).append(r)
        assert r["turns"] and all(t.strip() for t in r["turns"])
    assert len(records) >= 80
    assert set(cats) == {
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
    }
    assert min(len(v) for v in cats.values()) >= 10
    assert len({r["turns"][0] for r in records}) == len(records)


def _write(path, obj, lines=False):
    with path.open("w") as fh:
        if lines:
            fh.writelines(json.dumps(o) + "\n" for o in obj)
        else:
            json.dump(obj, fh)
    return str(path)


def test_alpaca_loader(tmp_path):
    path = _write(
        tmp_path / "alpaca.json",
        [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "", "input": "", "output": "skipped: no instruction"},
        ],
    )
    recs = load_instructions({"source": "alpaca", "path": path})
    assert [r["instruction"] for r in recs] == ["Add the numbers.\n\n2 and 3", "Name a colour."]
    assert recs[0]["response"] == "5" and recs[0]["doc_id"] != recs[1]["doc_id"]


def test_sharegpt_loader_keeps_dialogue(tmp_path):
    path = _write(
        tmp_path / "sg.json",
        [
            {
                "id": "a",
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello!"},
                    {"from": "human", "value": "Bye"},
                    {"from": "gpt", "value": "Bye."},
                ],
            },
            {"id": "b", "conversations": [{"from": "gpt", "value": "starts with the model"}]},
        ],
    )
    recs = load_instructions({"source": "sharegpt", "path": path})
    assert len(recs) == 1
    assert recs[0]["instruction"] == "Hi" and recs[0]["response"] == "Hello!"
    assert [m["role"] for m in recs[0]["messages"]] == ["user", "assistant", "user", "assistant"]


def test_jsonl_loader_with_field_names(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"q": "Why?", "a": "Because."}], lines=True)
    recs = load_instructions(
        {"source": "jsonl", "path": path, "fields": {"instruction": "q", "response": "a"}}
    )
    assert recs[0]["instruction"] == "Why?" and recs[0]["response"] == "Because."
    with pytest.raises(formats.FormatError, match="qa.jsonl.*'prompt'"):
        load_instructions({"source": "jsonl", "path": path, "fields": {"instruction": "prompt"}})


def test_mt_bench_loader(tmp_path):
    path = _write(
        tmp_path / "question.jsonl",
        [
            {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
            {"question_id": 82, "category": "math", "turns": ["1+1?"], "reference": ["2"]},
        ],
        lines=True,
    )
    recs = load_eval({"source": "mt_bench", "path": path, "categories": ["math"]}, PROMPTS, [])
    assert recs == [{"id": "82", "category": "math", "turns": ["1+1?"], "reference": "2"}]


def test_missing_corrupt_and_empty_files_are_named(tmp_path):
    with pytest.raises(DataSourceError, match="not found.*nope.json"):
        load_instructions({"source": "alpaca", "path": str(tmp_path / "nope.json")})
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "output": ')
    with pytest.raises(DataSourceError, match="bad.json"):
        load_instructions({"source": "alpaca", "path": str(bad)})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataSourceError, match="empty.jsonl"):
        load_instructions({"source": "jsonl", "path": str(empty)})


def test_hub_source_is_only_used_when_named_and_fails_clearly_offline():
    with pytest.raises(DataSourceError, match="hub dataset 'org/does-not-exist'"):
        load_instructions({"source": "hub", "hub_id": "org/does-not-exist", "format": "alpaca"})


def test_prepare_data_with_alpaca_source(tmp_path):
    rows = [
        {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(60)
    ]
    path = _write(tmp_path / "alpaca.json", rows)
    settings = {
        "seed": 0,
        "heldout_fraction": 0.25,
        "sft": {"source": "alpaca", "path": path},
        "distill_prompts": {"n": 5},
        "eval": {
            "heldout": {"source": "heldout", "max_prompts": 3},
            "prompts": {"source": "project_prompts", "categories": ["math"]},
        },
    }
    metrics = prepare_data(settings, tmp_path / "out", PROMPTS)
    assert metrics["sft_train"] + metrics["sft_heldout"] == 60
    assert metrics["eval"]["heldout"] == 3 and metrics["eval"]["prompts"] >= 10
    math = read_jsonl(tmp_path / "out" / "eval_prompts.jsonl")
    assert {r["category"] for r in math} == {"math"}
