"""Peers (transformers' generate and prompt lookup, timed beside our methods) and the
per-step timings of the speculative loop, on micro models."""

from __future__ import annotations

import math

import pytest
import torch

from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.catalog import (
    PEERS,
    STYLES,
    is_peer,
    is_plain,
    label,
    references,
    with_references,
)
from spadec.decoding.draft import TreeParams
from spadec.decoding.eagle2 import eagle2_decode, speculative_decode
from spadec.decoding.peers import hf_generate_decode
from spadec.decoding.spadec import spadec_verify_step
from spadec.decoding.timing import PARTS, StepTimer, sum_timings
from spadec.eagle.head import new_head
from spadec.eval.methods import Models, run_method
from spadec.eval.speed import run_side_by_side, summarize
from tests.unit.test_dllm_model import make as make_dllm
from tests.unit.test_eagle_decode import OracleDrafter, dense, prompt
from tests.unit.test_spadec import _predictor

# --- peers ---------------------------------------------------------------------------


def test_peers_are_declared_as_dense_reference_rows():
    assert PEERS == ("hf_generate", "hf_prompt_lookup")
    assert all(is_peer(p) and not is_plain(p) for p in PEERS)
    assert label("hf_generate") == "HF generate (peer)"
    assert "peer" in label("hf_prompt_lookup") and set(PEERS) <= set(STYLES)
    # a peer alone brings ar in as its reference; its reference is ar
    assert with_references(["hf_generate"], False) == ["hf_generate", "ar"]
    assert references({"ar": "dense", "hf_prompt_lookup": "dense"})["hf_prompt_lookup"] == "ar"


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("method", ["hf_generate", "hf_prompt_lookup"])
def test_greedy_peers_equal_greedy_ar(kind, method):
    model = dense(kind)
    models = Models(targets={"dense": model})
    # a repetitive prompt, so prompt lookup finds n-grams to draft from
    ids = torch.cat([prompt(), prompt(), prompt(n=4, seed=5)], dim=1)
    ar = run_method("ar", models, ids, 40, TreeParams(8, 3, 3))
    ours = run_method(method, models, ids, 40, TreeParams(8, 3, 3))
    assert ours.output_ids == ar.output_ids and ours.new_tokens == 40
    assert ours.wall_s > 0 and ours.target_forwards >= 1
    if method == "hf_generate":
        assert ours.target_forwards == ar.target_forwards and ours.extra["tau"] == 1.0


def test_peers_stop_at_eos_like_ar_and_ignore_the_models_own_eos():
    model = dense()
    model.generation_config.eos_token_id = 7  # must not stop a run that names no eos
    ids = prompt(seed=11)
    ar = autoregressive_decode(model, ids, 40)
    later = [t for i, t in enumerate(ar.output_ids) if i > 3 and t not in ar.output_ids[:i]]
    assert hf_generate_decode(model, ids, 40).output_ids == ar.output_ids
    if later:
        eos = later[0]
        ar_eos = autoregressive_decode(model, ids, 40, eos_token_id=eos)
        for lookup in (None, 4):
            out = hf_generate_decode(model, ids, 40, eos, prompt_lookup=lookup).output_ids
            assert out == ar_eos.output_ids and out[-1] == eos


def test_side_by_side_records_say_whether_a_peer_equals_ar_and_where_time_goes():
    model = dense()
    models = Models(targets={"dense": model}, heads={"dense": new_head(model).double().eval()})
    prompts = [("a", prompt(seed=1)[0].tolist()), ("b", prompt(seed=2)[0].tolist())]
    methods = ["ar", "hf_generate", "hf_prompt_lookup", "eagle2"]
    records = run_side_by_side(
        models, methods, prompts, TreeParams(8, 3, 3), 16, None, step_timing=True
    )
    peers = [r for r in records if is_peer(r["method"])]
    assert len(peers) == 4 and all(r["same_output_as_ar"] is True for r in peers)
    assert all("same_output_as_ar" not in r for r in records if r["method"] == "ar")
    summary = summarize(records, {m: "ar" for m in methods if m != "ar"})
    assert summary["hf_generate"]["same_output_as_baseline"] == 1.0
    timed = [r for r in records if r["method"] == "eagle2"]
    for r in timed:
        _check_timing(r["timing"], r["wall_s"], split=False)
    total = summary["eagle2"]["timing"]  # summed per method, with shares of the wall
    assert total["wall_s"] == pytest.approx(sum(r["wall_s"] for r in timed))
    assert sum(v for k, v in total["shares"].items()) == pytest.approx(1.0)
    assert "timing" not in summary["ar"] and "timing" not in summary["hf_generate"]


# --- where the time goes ---------------------------------------------------------------


def _check_timing(timing: dict, wall: float, split: bool) -> None:
    parts = [timing[f"{p}_s"] for p in PARTS]
    assert all(v >= 0 for v in parts) and timing["host_s"] >= 0
    assert sum(parts) <= wall + 1e-9
    assert sum(parts) + timing["host_s"] == pytest.approx(wall)
    assert timing["wall_s"] == wall and timing["draft_s"] > 0 and timing["verify_s"] > 0
    assert all(0 <= s <= 1 for s in timing["shares"].values())
    if split:
        sub = [timing[k] for k in ("verify_first_k_s", "predictor_ats_s", "verify_rest_s")]
        assert all(v >= 0 for v in sub) and sum(sub) == pytest.approx(timing["verify_s"])
        assert timing["verify_first_k_s"] > 0 and timing["predictor_ats_s"] > 0
    else:
        assert "verify_first_k_s" not in timing


def test_step_timings_sum_to_at_most_the_wall_time_and_change_no_token():
    model = dense()
    head = new_head(model).double().eval()
    ids = prompt()
    plain = eagle2_decode(model, head, ids, TreeParams(8, 3, 3), 30)
    assert "timing" not in plain.extra  # off by default
    timed = eagle2_decode(model, head, ids, TreeParams(8, 3, 3), 30, step_timing=True)
    assert timed.output_ids == plain.output_ids
    _check_timing(timed.extra["timing"], timed.wall_s, split=False)
    assert timed.extra["timing"]["synced"] is False  # CPU: sync_timing has nothing to sync


def test_spadec_verify_is_split_into_first_k_predictor_and_rest():
    model = make_dllm("llama-gqa")
    ids = prompt(vocab=model.config.vocab_size)
    ref = autoregressive_decode(model, ids, 30)
    oracle = OracleDrafter(ref.output_ids + [0] * 8, ids.shape[1], model.config.vocab_size)
    verify = spadec_verify_step(_predictor(model), "prune")
    out = speculative_decode(
        model, oracle, ids, 30, verify_step=verify, step_timing=True, sync_timing=True
    )
    _check_timing(out.extra["timing"], out.wall_s, split=True)


def test_timings_are_summed_per_method():
    timer = StepTimer(enabled=True)
    t = timer.lap("draft", timer.now())
    timer.lap("verify", t)
    one = timer.summary(1.0)
    total = sum_timings([one, one])
    assert total["wall_s"] == 2.0 and total["draft_s"] == pytest.approx(2 * one["draft_s"])
    assert total["shares"]["host"] == pytest.approx(one["shares"]["host"])
    assert StepTimer().now() == 0.0 and StepTimer().lap("x", 0.0) == 0.0


# --- peers in the tables ---------------------------------------------------------------


def test_tables_show_peers_and_every_speedup_over_them(tmp_path):
    from spadec.eval.publish import publish
    from spadec.io import write_jsonl
    from tests.unit.test_tables import rec

    # ar 10 tok/s; HF generate 5 tok/s; prompt lookup 20 tok/s, differing on p2; eagle2 40
    records = [
        rec("ar", "p1", 10, 1.0, [1, 2]),
        rec("ar", "p2", 10, 1.0, [3, 4]),
        rec("hf_generate", "p1", 10, 2.0, [1, 2], tau=1.0, same_output_as_ar=True),
        rec("hf_generate", "p2", 10, 2.0, [3, 4], tau=1.0, same_output_as_ar=True),
        rec("hf_prompt_lookup", "p1", 10, 0.5, [1, 2], same_output_as_ar=True),
        rec("hf_prompt_lookup", "p2", 10, 0.5, [3, 5], same_output_as_ar=False),
        rec("eagle2", "p1", 10, 0.25, [1, 2], tau=3.0, timing={"draft_s": 0.1, "wall_s": 0.25}),
        rec("eagle2", "p2", 10, 0.25, [3, 4], tau=3.0, timing={"draft_s": 0.1, "wall_s": 0.25}),
    ]
    write_jsonl(tmp_path / "records.jsonl", records)
    out = publish([tmp_path / "records.jsonl"], tmp_path / "t", tmp_path / "f", 1)
    table = out["speedup"].set_index("method")
    assert list(table.index) == ["ar", "hf_generate", "hf_prompt_lookup", "eagle2"]
    assert table["peer"].tolist() == [False, True, True, False]
    assert table.at["eagle2", "speedup"] == pytest.approx(4.0)
    assert table.at["eagle2", "speedup_vs_hf_generate"] == pytest.approx(8.0)
    assert table.at["eagle2", "speedup_vs_hf_prompt_lookup"] == pytest.approx(2.0)
    assert table.at["ar", "speedup_vs_hf_generate"] == pytest.approx(2.0)
    assert table.at["hf_prompt_lookup", "same_output_as_ar"] == 0.5
    assert table.at["eagle2", "time_share_draft"] == pytest.approx(0.4)
    assert math.isnan(table.at["ar", "time_share_draft"])
    md = (tmp_path / "t" / "speedup.md").read_text()
    assert "HF generate (peer)" in md and "× HF prompt lookup" in md and "reference rows" in md
    assert "HF generate" in (tmp_path / "t" / "speedup.tex").read_text()
    assert (tmp_path / "f" / "speedup.png").stat().st_size > 0


def test_sampled_peers_are_reproducible_and_leave_the_global_rng_alone():
    model = dense()
    ids = prompt()
    state = torch.random.get_rng_state()
    runs = [
        hf_generate_decode(
            model, ids, 20, temperature=1.0, generator=torch.Generator().manual_seed(s)
        )
        for s in (5, 5, 6)
    ]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0].output_ids == runs[1].output_ids != runs[2].output_ids
