"""The method catalog: which target each method runs on and which plain decoding is its
lossless reference, with and without a separate baseline D-LLM; and the catalog as the one
declaration the schema, the CLI, the eval stage's artefacts and the tables follow."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spadec.decoding import catalog
from spadec.decoding.catalog import (
    ATS_MODES,
    DRAFTERS,
    METHODS,
    TARGETS,
    VERIFY_STEPS,
    Drafter,
    Method,
    artefact_path,
    bench_methods,
    configurable_methods,
    eval_inputs,
    is_lossless,
    method_info,
    method_names,
    model_keys,
    needs,
    references,
    resolve_target,
    separate_baseline,
    with_references,
)

PAPER = ["ar", "dllm", "eagle2", "eagle2_dllm", "spadec_eagle2", "spadec_eagle2_steer"]
REPO = Path(__file__).resolve().parents[2]


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
    with pytest.raises(ValueError, match="unknown method 'hydra'.*spadec_eagle2"):
        method_info("hydra")


def test_separate_baseline_from_paths():
    assert separate_baseline({"dllm": "a", "dllm_baseline": "b"})
    assert not separate_baseline({"dllm": "a", "dllm_baseline": "a"})
    assert not separate_baseline({"dllm": "a"})


def test_every_method_has_its_own_label_and_colour():
    from matplotlib.colors import to_rgba

    from spadec.decoding.catalog import METHOD_ORDER, STYLES, colour, label

    assert set(STYLES) == set(METHOD_ORDER) == set(METHODS)
    labels = [label(m) for m in METHOD_ORDER]
    colours = [to_rgba(colour(m)) for m in METHOD_ORDER]  # a valid matplotlib colour each
    assert len(set(labels)) == len(labels)
    assert len(set(colours)) == len(colours)
    assert label("hydra") == "hydra" and colour("hydra") is None


# --- the declarations are consistent ---------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_every_entry_is_a_consistent_declaration(name):
    m = METHODS[name]
    assert m.target in TARGETS and m.kind in ("ours", "peer")
    assert m.drafter is None or m.drafter in DRAFTERS
    assert m.verify is None or m.verify in VERIFY_STEPS
    assert m.ats_mode is None or (m.ats_mode in ATS_MODES and m.verify == "spadec")
    if m.kind == "ours":  # our tree methods say how they verify; plain ones have no tree
        assert (m.drafter is None) == (m.verify is None)
    else:
        assert m.verify is None and m.lossless is True  # peers: greedy, lossless
    # lossless is declared, except where it is the configured ATS mode's
    if m.ats_mode is not None:
        assert m.lossless is ATS_MODES[m.ats_mode]
        assert catalog.base_method(name) in configurable_methods()
    assert (m.lossless is None) == (m.verify == "spadec" and m.ats_mode is None)
    assert m.needs_predictor == (m.verify == "spadec")
    assert m.plain == (m.drafter is None and not m.peer)


def test_lossless_and_ats_modes():
    assert is_lossless("spadec_eagle2", "prune") and not is_lossless("spadec_eagle2", "steer")
    assert not is_lossless("spadec_eagle2_steer", "prune")
    assert is_lossless("spadec_eagle2_prune", "steer") and is_lossless("eagle2_dllm", "steer")
    assert catalog.ats_mode("spadec_eagle2", "steer") == "steer"
    assert catalog.ats_mode("spadec_eagle2_prune", "steer") == "prune"
    assert catalog.ats_mode("eagle2", "steer") is None
    assert catalog.ats_variants("spadec_eagle2") == {
        "spadec_eagle2_prune": "prune",
        "spadec_eagle2_steer": "steer",
    }
    assert catalog.base_method("spadec_eagle2_steer") == "spadec_eagle2"
    assert catalog.base_method("eagle2") == "eagle2"


def test_the_ablation_cells_follow_from_the_verify_steps():
    assert catalog.VERIFICATION == {
        "eagle2_dllm": "all tokens vote",
        "eagle2_dllm_robust": "all tokens vote",
        "spadec_eagle2_prune": "ATS prune",
        "spadec_eagle2_steer": "ATS steer",
        "medusa_dllm": "all tokens vote",
        "spadec_medusa_prune": "ATS prune",
        "spadec_medusa_steer": "ATS steer",
    }
    assert catalog.verification("spadec_eagle2", "steer") == "ATS steer"
    assert catalog.verification("spadec_eagle2") is None  # its mode is the run's
    assert catalog.verification("eagle2") is None and catalog.verification("ar") is None


def test_every_kind_of_the_catalog_has_its_code():
    from spadec.decoding.ats import MODES
    from spadec.eval import methods as code

    assert list(ATS_MODES) == list(MODES)
    for name, m in METHODS.items():
        if m.peer:
            assert m.drafter in code.PEER_DRAFT, name
        elif not m.plain:
            assert m.drafter in code.DRAFTERS and m.verify in code.VERIFY_STEPS, name


def test_bench_methods_add_the_other_mode_and_the_references():
    configured = ["ar", "dllm", "eagle2", "eagle2_dllm", "spadec_eagle2"]
    assert bench_methods(configured, "prune", True, True) == [
        *configured,
        "spadec_eagle2_steer",
        "dllm_robust",
    ]
    assert bench_methods(configured, "steer", True, False) == [*configured, "spadec_eagle2_prune"]
    assert bench_methods(configured, "prune", False, False) == configured


# --- the schema, the CLI ---------------------------------------------------------------


def test_the_schemas_method_list_is_the_catalogs():
    from spadec.config import load_schema

    schema = load_schema()["$defs"]
    methods = schema["eval"]["properties"]["methods"]
    assert methods["items"]["enum"] == configurable_methods()
    assert set(methods["default"]) <= set(configurable_methods())
    assert schema["predictor"]["properties"]["ats_mode"]["enum"] == list(ATS_MODES)


def _generate_help(capsys) -> str:
    from spadec.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    return capsys.readouterr().out


def test_the_clis_methods_and_model_options_are_the_catalogs(capsys):
    text = _generate_help(capsys)
    assert "--method {" + ",".join(method_names()) + "}" in text
    for key in model_keys():
        assert f"{catalog.artefact_option(key)} DIR" in text
        assert f"<results>/{artefact_path(key)}" in text
    assert "--ats-mode {" + ",".join(ATS_MODES) + "}" in text


# --- artefacts -------------------------------------------------------------------------


def test_the_artefacts_lie_where_the_stages_write_them(tmp_path):
    from spadec.eval.bench import results_paths

    res = tmp_path / "m"
    expected = {
        "dense": res / "base",
        "dllm": res / "dllm" / "hf",
        "head_dense": res / "eagle" / "dense" / "head",
        "head_dllm": res / "eagle" / "dllm" / "head",
        "medusa_dense": res / "medusa" / "dense" / "heads",
        "medusa_dllm": res / "medusa" / "dllm" / "heads",
        "predictor": res / "predictor" / "model",
        "predictor_medusa": res / "predictor_medusa" / "model",
        "data": res / "data",
    }
    assert results_paths(res) == expected
    (res / "dllm_baseline" / "hf").mkdir(parents=True)
    assert results_paths(res) == {
        **expected,
        "dllm_baseline": res / "dllm_baseline" / "hf",
        "head_dllm_baseline": res / "eagle" / "dllm_baseline" / "head",
        "medusa_dllm_baseline": res / "medusa" / "dllm_baseline" / "heads",
    }
    with pytest.raises(ValueError, match="unknown artefact 'head_nope'"):
        artefact_path("head_nope")


def test_what_methods_need():
    every = ["ar", "dllm", "eagle2", "eagle2_dllm", "eagle2_dllm_robust", "spadec_eagle2"]
    every += ["medusa", "medusa_dllm", "spadec_medusa"]
    assert needs(every, True) == model_keys(True)
    assert needs(every, False) == model_keys(False)
    assert model_keys(False) == [
        "dense",
        "dllm",
        "head_dense",
        "head_dllm",
        "medusa_dense",
        "medusa_dllm",
        "predictor",
        "predictor_medusa",
    ]
    # each drafter kind's trees have their own predictor
    assert needs(["spadec_medusa"], False) == ["dllm", "medusa_dllm", "predictor_medusa"]
    assert needs(["ar", "hf_generate", "hf_prompt_lookup"], True) == ["dense"]
    assert needs(["eagle2_dllm"], False) == ["dllm", "head_dllm"]
    assert needs(["spadec_eagle2_steer"], True) == ["dllm", "head_dllm", "predictor"]
    # an eval run also gets the baseline D-LLM where there is one: it names the references
    assert eval_inputs(["ar", "eagle2"], True) == ["dense", "dllm_baseline", "head_dense"]
    assert eval_inputs(["ar", "eagle2"], False) == ["dense", "head_dense"]


# --- a new method is one entry -----------------------------------------------------------


@pytest.fixture
def medusa(monkeypatch):
    """A new method added the way Medusa's were: a drafter kind and an entry."""
    monkeypatch.setitem(DRAFTERS, "hydra", Drafter("Hydra heads", "hydra", "hydra/{target}"))
    entry = Method("dllm", "Hydra+D-LLM", "tab:gray", "hydra", "all")
    monkeypatch.setitem(METHODS, "hydra_dllm", entry)
    return "hydra_dllm"


def test_a_new_entry_reaches_the_schema_list_the_cli_the_artefacts_and_the_tables(
    medusa, capsys, tmp_path
):
    from spadec.eval.bench import results_paths
    from spadec.eval.tables import _order

    assert medusa in configurable_methods() and method_names()[-1] == medusa
    assert needs([medusa], False) == ["dllm", "hydra_dllm"]
    assert artefact_path("hydra_dllm") == "hydra/dllm"
    assert results_paths(tmp_path)["hydra_dllm"] == tmp_path / "hydra" / "dllm"
    text = _generate_help(capsys)
    assert f",{medusa}}}" in text and "--hydra-dllm DIR" in text
    assert catalog.label(medusa) == "Hydra+D-LLM"
    assert catalog.verification(medusa) == "all tokens vote"
    rows = pd.DataFrame({"model": "m", "bench": "b", "method": ["zzz", medusa, "ar"]})
    assert list(_order(rows)["method"]) == ["ar", medusa, "zzz"]


def test_the_baseline_and_the_showcase_are_catalog_methods():
    assert catalog.BASELINE == catalog.plain_method("dense", True) == catalog.DENSE_METHODS[0]
    assert catalog.SHOWCASE in configurable_methods()
