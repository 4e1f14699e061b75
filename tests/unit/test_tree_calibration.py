"""The EAGLE tree calibrated on the machine (`spadec.eval.calibrate`): every candidate is
timed beside ar and the fastest is chosen; bad candidates fail at start-up."""

from __future__ import annotations

import pytest
import torch

from spadec.config import validate_config
from spadec.decoding.context import PromptTooLongError
from spadec.decoding.draft import TreeParams
from spadec.eagle.head import new_head
from spadec.eval.bench import calibrated_tree
from spadec.eval.calibrate import (
    calibrate_tree,
    calibration_prompts,
    parse_tree,
    tree_candidates,
    tree_name,
)
from spadec.eval.methods import Models, run_method
from spadec.io import write_jsonl
from tests.unit.test_config import _error, _micro
from tests.unit.test_eagle_decode import dense, prompt


def test_tree_names_round_trip_and_malformed_ones_are_named():
    assert parse_tree("16/4/4") == TreeParams(16, 4, 4)
    assert tree_name(parse_tree(" 3/1/2 ")) == "3/1/2"
    for bad in ("16/4", "a/b/c", "16-4-4"):
        with pytest.raises(ValueError, match=bad):
            parse_tree(bad)
    with pytest.raises(ValueError, match="total_tokens >= 2"):
        parse_tree("1/0/1")  # a tree needs a drafted node


def test_calibration_times_every_candidate_and_keeps_the_fastest():
    model = dense()
    models = Models(targets={"dense": model}, heads={"dense": new_head(model).double().eval()})
    prompts = [prompt(seed=s)[0].tolist() for s in (1, 2)]
    candidates = [TreeParams(8, 3, 3), TreeParams(3, 1, 2), TreeParams(2, 0, 1)]
    chosen, record = calibrate_tree(models, prompts, candidates, 12, None)
    rows = record["candidates"]
    assert [r["tree"] for r in rows] == ["8/3/3", "3/1/2", "2/0/1"]
    assert record["prompts"] == 2 and record["method"] == "eagle2"
    best = max(rows, key=lambda r: r["speedup"])
    assert record["chosen"] == best["tree"] == tree_name(chosen)
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["speedup"] == pytest.approx(
            r["tokens_per_s"] / record["ar_tokens_per_s"]
        )
        assert 1.0 <= r["tau"] <= 1 + parse_tree(r["tree"]).depth + 1
    # whatever tree wins, greedy decoding on it is still the target's own output
    ar = run_method("ar", models, torch.tensor([prompts[0]]), 12, chosen)
    assert run_method("eagle2", models, torch.tensor([prompts[0]]), 12, chosen).output_ids == (
        ar.output_ids
    )


class Tok:
    """What prompt_ids needs of a tokenizer: one id per character (below 96, the test
    models' vocabulary)."""

    eos_token_id = None

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return [ord(c) % 96 for c in messages[0]["content"]]


def test_calibration_prompts_are_the_distillation_prompts(tmp_path):
    rows = [{"id": str(i), "instruction": text} for i, text in enumerate(["ab", "cde", "f"])]
    write_jsonl(tmp_path / "distill_prompts.jsonl", rows)
    assert calibration_prompts(tmp_path, Tok(), 2) == [[1, 2], [3, 4, 5]]
    (tmp_path / "distill_prompts.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="distill_prompts.jsonl"):
        calibration_prompts(tmp_path, Tok(), 2)
    write_jsonl(tmp_path / "distill_prompts.jsonl", [])
    with pytest.raises(ValueError, match="no prompts"):
        calibration_prompts(tmp_path, Tok(), 2)


def test_tree_candidates_are_checked_at_start_up():
    eval_ = {"methods": ["ar", "eagle2"], "tree_candidates": ["3/1/2", "16/4/4"]}
    validate_config(_micro(eval=eval_))
    msg = _error(_micro(eval={**eval_, "tree_candidates": ["3/1/4"]}))
    assert "eval.tree_candidates" in msg and "'3/1/4'" in msg
    msg = _error(_micro(eval={**eval_, "methods": ["ar", "dllm"]}))
    assert "eval.tree_candidates" in msg and "eagle2" in msg
    assert "tree_candidates" in _error(_micro(eval={**eval_, "tree_candidates": ["3-1-2"]}))


def test_the_eval_calibrates_over_its_own_tree_too_and_skips_prompts_too_long(tmp_path):
    model = dense()  # a 512-token context
    models = Models(
        targets={"dense": model},
        heads={"dense": new_head(model).double().eval()},
        tokenizer=Tok(),
    )
    rows = [{"id": "long", "instruction": "x" * 600}, {"id": "short", "instruction": "abc"}]
    write_jsonl(tmp_path / "distill_prompts.jsonl", rows)
    speed = {"tree_calibration_prompts": 2, "max_new_tokens": 8}
    trees = tree_candidates(TreeParams(8, 3, 3), ["3/1/2", "8/3/3"])
    assert [tree_name(t) for t in trees] == ["8/3/3", "3/1/2"]  # configured first, once
    chosen, record = calibrated_tree(models, ["ar", "eagle2"], tmp_path, speed, trees)
    assert [r["tree"] for r in record["candidates"]] == ["8/3/3", "3/1/2"]
    assert record["prompts"] == 1 and tree_name(chosen) == record["chosen"]
    with pytest.raises(ValueError, match="eagle2"):
        calibrated_tree(models, ["ar", "dllm"], tmp_path, speed, trees)
    write_jsonl(tmp_path / "distill_prompts.jsonl", rows[:1])
    with pytest.raises(PromptTooLongError, match="no distillation prompt"):
        calibrated_tree(models, ["ar", "eagle2"], tmp_path, speed, trees)
