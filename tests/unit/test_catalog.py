"""The method catalog: which target each method runs on and which plain decoding is its
lossless reference, with and without a separate baseline D-LLM."""

from __future__ import annotations

import pytest

from spadec.decoding.catalog import (
    method_info,
    references,
    resolve_target,
    separate_baseline,
    with_references,
)

PAPER = ["ar", "dllm", "eagle2", "eagle2_dllm", "spadec_eagle2", "spadec_eagle2_steer"]


def test_with_a_baseline_dllm_spadec_gets_its_own_reference():
    methods = with_references(PAPER, separate_baseline=True)
    assert methods == [*PAPER, "dllm_robust"]
    targets = {m: resolve_target(method_info(m).target, True) for m in methods}
    assert targets["eagle2_dllm"] == targets["dllm"] == "dllm_baseline"
    assert targets["spadec_eagle2"] == targets["spadec_eagle2_steer"] == "dllm"
    refs = references(targets)
    assert refs["eagle2"] == "ar" and refs["eagle2_dllm"] == "dllm"
    assert refs["spadec_eagle2"] == refs["spadec_eagle2_steer"] == "dllm_robust"


def test_with_one_dllm_every_dllm_method_shares_dllm():
    assert with_references(PAPER, separate_baseline=False) == PAPER
    targets = {m: resolve_target(method_info(m).target, False) for m in PAPER}
    assert set(targets.values()) == {"dense", "dllm"}
    assert references(targets)["spadec_eagle2"] == "dllm"


def test_a_missing_reference_is_added_once():
    assert with_references(["ar", "eagle2_dllm"], True) == ["ar", "eagle2_dllm", "dllm"]
    assert with_references(["eagle2", "spadec_eagle2"], False) == [
        "eagle2",
        "spadec_eagle2",
        "ar",
        "dllm",
    ]


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'medusa'.*spadec_eagle2"):
        method_info("medusa")


def test_separate_baseline_from_paths():
    assert separate_baseline({"dllm": "a", "dllm_baseline": "b"})
    assert not separate_baseline({"dllm": "a", "dllm_baseline": "a"})
    assert not separate_baseline({"dllm": "a"})


def test_the_schemas_method_list_is_the_catalogs():
    from spadec.config import load_schema
    from spadec.decoding.catalog import METHODS

    methods = load_schema()["$defs"]["eval"]["properties"]["methods"]
    assert methods["items"]["enum"] == list(METHODS)
    assert set(methods["default"]) <= set(METHODS)


def test_every_method_has_its_own_label_and_colour():
    from matplotlib.colors import to_rgba

    from spadec.decoding.catalog import METHOD_ORDER, STYLES, colour, label

    assert set(STYLES) == set(METHOD_ORDER)
    labels = [label(m) for m in METHOD_ORDER]
    colours = [to_rgba(colour(m)) for m in METHOD_ORDER]  # a valid matplotlib colour each
    assert len(set(labels)) == len(labels)
    assert len(set(colours)) == len(colours)
    assert label("medusa") == "medusa" and colour("medusa") is None
