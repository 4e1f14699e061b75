"""Config validation: defaults, one-line errors naming the key, per-model resolution."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from spadec.config import ConfigError, config_hash, load_yaml, resolve_stage, validate_config
from tests.conftest import REPO, run, tool

ALL_CONFIGS = [REPO / "config.yaml", *sorted((REPO / "configs").rglob("*.yaml"))]


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_validates(path):
    config = validate_config(load_yaml(path))
    for model in config["models"]:
        for stage in ("data", "base", "dllm", "eagle", "predictor", "eval"):
            assert isinstance(resolve_stage(config, model, stage), dict)


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert "\n" not in message, "config errors must be one line"
    return message


def test_wrong_type_names_the_key():
    msg = _error({"models": {"m": {}}, "base": {"pretrain": {"num_layers": "eight"}}})
    assert "base.pretrain.num_layers" in msg and "integer" in msg


def test_unknown_key_is_named_with_a_suggestion():
    msg = _error({"models": {"m": {}}, "base": {"pretrian": {}}})
    assert "base.pretrian" in msg and "pretrain" in msg


def test_unknown_key_inside_a_model_is_named():
    msg = _error({"models": {"m": {"dllm": {"lora_rnk": 4}}}})
    assert "models.m.dllm.lora_rnk" in msg and "lora_rank" in msg


def test_bad_enum_and_empty_models():
    assert "base.source" in _error({"models": {"m": {}}, "base": {"source": "ftp"}})
    assert "models" in _error({"models": {}})
    assert "models" in _error({"data": {}})


def test_missing_base_model_dir_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    msg = _error({"models": {"m": {"base": {"source": "hf", "path": str(missing)}}}})
    assert "models.m.base.path" in msg and str(missing) in msg


def test_base_dir_without_config_json(tmp_path):
    msg = _error({"models": {"m": {"base": {"source": "hf", "path": str(tmp_path)}}}})
    assert "config.json" in msg


def test_hf_source_needs_exactly_one_of_path_and_hub_id():
    assert "exactly one" in _error({"models": {"m": {"base": {"source": "hf"}}}})


def test_missing_dataset_file_is_named(tmp_path):
    missing = tmp_path / "alpaca.json"
    msg = _error({"models": {"m": {}}, "data": {"sft": {"source": "alpaca", "path": str(missing)}}})
    assert "data.sft.path" in msg and str(missing) in msg
    msg = _error(
        {
            "models": {"m": {}},
            "data": {"eval": {"mt": {"source": "mt_bench", "path": str(missing)}}},
        }
    )
    assert "data.eval.mt.path" in msg


def test_defaults_are_filled_and_model_overrides_win():
    config = validate_config(
        {
            "models": {"a": {}, "b": {"base": {"pretrain": {"num_layers": 7}}}},
            "base": {"pretrain": {"hidden_size": 128}},
        }
    )
    a, b = resolve_stage(config, "a", "base"), resolve_stage(config, "b", "base")
    assert a["pretrain"]["num_layers"] == 8  # schema default
    assert b["pretrain"]["num_layers"] == 7  # the model's override
    # A model override of one key keeps the top-level value of its siblings.
    assert a["pretrain"]["hidden_size"] == b["pretrain"]["hidden_size"] == 128
    assert a["source"] == "pretrain"


def test_resolved_stage_only_changes_with_its_own_settings():
    config = validate_config(load_yaml(REPO / "config.yaml"))
    before = config_hash(resolve_stage(config, "tiny", "data"))
    changed = copy.deepcopy(config)
    changed["base"]["pretrain"]["steps"] += 1
    assert config_hash(resolve_stage(changed, "tiny", "data")) == before
    assert config_hash(resolve_stage(changed, "tiny", "base")) != config_hash(
        resolve_stage(config, "tiny", "base")
    )


def test_unknown_model_or_stage():
    config = validate_config({"models": {"a": {}}})
    with pytest.raises(ConfigError, match="unknown model 'zz'"):
        resolve_stage(config, "zz", "base")
    with pytest.raises(ConfigError, match="unknown stage"):
        resolve_stage(config, "a", "nope")


def test_unreadable_yaml_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "none.yaml")


def test_cli_check_config_reports_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump({"models": {"m": {}}, "eval": {"max_new_tokens": -1}}))
    proc = run([tool("spadec"), "check-config", str(bad)])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "config error" in line]
    assert len(lines) == 1 and "eval.max_new_tokens" in lines[0]
    ok = run(
        [tool("spadec"), "check-config", str(REPO / "config.yaml"), "--stage", "base"], check=True
    )
    assert '"num_layers": 8' in ok.stdout


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.strip().lstrip("- ").strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_environment_yml_has_the_same_pins_as_requirements():
    req = _pins(Path(REPO / "requirements.txt").read_text().splitlines())
    env = _pins(Path(REPO / "environment.yml").read_text().splitlines())
    assert req["torch"] == "2.13.0"
    for name in (
        "transformers",
        "peft",
        "accelerate",
        "deepspeed",
        "datasets",
        "pandas",
        "snakemake",
    ):
        assert name in req, f"{name} must be pinned exactly"
    assert env == req


def test_stage_parts_cover_every_key_and_isolate_their_rules():
    from spadec.config import RESOURCE_KEYS, STAGE_PARTS, load_schema

    schema = load_schema()
    for stage, parts in STAGE_PARTS.items():
        keys = set(schema["$defs"][stage]["properties"])
        covered = set().union(*parts.values()) | set(RESOURCE_KEYS.get(stage, ()))
        assert keys == covered, f"{stage} keys not in any part: {sorted(keys - covered)}"
    config = validate_config(load_yaml(REPO / "config.yaml"))
    before = {p: resolve_stage(config, "tiny", f"eagle.{p}") for p in STAGE_PARTS["eagle"]}
    changed = copy.deepcopy(config)
    changed["eagle"]["lr"] = 0.5
    after = {p: resolve_stage(changed, "tiny", f"eagle.{p}") for p in STAGE_PARTS["eagle"]}
    assert [p for p in before if before[p] != after[p]] == ["train"]
    assert after["train"]["lr"] == 0.5 and "seed" in after["train"]
    with pytest.raises(ConfigError, match="unknown settings part"):
        resolve_stage(config, "tiny", "eagle.nope")


def test_eval_without_the_ar_baseline_is_refused():
    config = {"models": {"m": {}}, "eval": {"methods": ["eagle2", "spadec_eagle2"]}}
    with pytest.raises(ConfigError, match=r"eval.methods.*must include 'ar'"):
        validate_config(config, check_paths=False)
    per_model = {"models": {"m": {"eval": {"methods": ["dllm"]}}}}
    with pytest.raises(ConfigError, match=r"model m\): must include 'ar'"):
        validate_config(per_model, check_paths=False)


def test_two_dllms_each_with_only_its_own_router_input():
    from spadec.config import dllm_variants

    config = validate_config(load_yaml(REPO / "config.yaml"))
    assert dllm_variants(config, "tiny") == ["dllm", "dllm_baseline"]
    spadec_dllm = resolve_stage(config, "tiny", "dllm")
    baseline = resolve_stage(config, "tiny", "dllm_baseline")
    assert spadec_dllm["router_input_bits"] == 4 and baseline["router_input_bits"] is None
    assert "baseline_router_input_bits" not in spadec_dllm | baseline
    # everything else is shared: the two differ in the router input only
    assert {k for k in baseline if baseline[k] != spadec_dllm[k]} == {"router_input_bits"}
    # the baseline's router input does not touch SpaDec's D-LLM settings (no rerun)
    changed = copy.deepcopy(config)
    changed["dllm"]["baseline_router_input_bits"] = 8
    assert resolve_stage(changed, "tiny", "dllm") == spadec_dllm
    assert resolve_stage(changed, "tiny", "dllm_baseline")["router_input_bits"] == 8
    # equal router inputs: one D-LLM serves every method
    changed["dllm"]["baseline_router_input_bits"] = 4
    assert dllm_variants(changed, "tiny") == ["dllm"]


# --- cross-field checks (spadec.config.check_cross_fields) ----------------------------

MICRO = REPO / "tests" / "fixtures" / "config.micro.yaml"


def _micro(**overrides) -> dict:
    """The micro config (8 layers) with `models.micro` overrides, e.g. predictor={...}."""
    config = load_yaml(MICRO)
    config["models"]["micro"].update(overrides)
    return config


def test_tree_width_above_its_size_is_refused():
    msg = _error(_micro(eagle={"top_k": 9, "total_tokens": 8}))
    assert "eagle.top_k" in msg and "eagle.total_tokens" in msg and "model micro" in msg
    validate_config(_micro(eagle={"top_k": 8, "total_tokens": 8}))


@pytest.mark.parametrize(
    ("section", "key"), [("predictor", "layer_k"), ("dllm", "dynamic_start_layer")]
)
def test_layer_index_must_be_below_the_base_depth(section, key):
    msg = _error(_micro(**{section: {key: 8}}))
    assert f"'{section}.{key}'" in msg and "8 layers" in msg
    assert "base.pretrain.num_layers" in msg
    validate_config(_micro(**{section: {key: 7}}))


def test_a_per_model_base_depth_is_the_one_checked():
    # the top-level predictor.layer_k (2) fits 8 layers but not the model's own 2
    msg = _error(_micro(base={"pretrain": {"num_layers": 2}}))
    assert "predictor.layer_k" in msg and "2 layers" in msg


def test_a_local_base_directory_gives_its_depth(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 4}')
    base = {"source": "hf", "path": str(tmp_path)}
    msg = _error({"models": {"m": {"base": base, "predictor": {"layer_k": 4}}}})
    assert "predictor.layer_k" in msg and str(tmp_path / "config.json") in msg
    validate_config({"models": {"m": {"base": base, "predictor": {"layer_k": 3}}}})


def test_an_unknown_depth_skips_the_layer_checks():
    # a hub id: the depth is not known without a download, so nothing is refused
    base = {"source": "hf", "hub_id": "org/model"}
    validate_config({"models": {"m": {"base": base, "predictor": {"layer_k": 99}}}})


def test_a_rate_profile_is_checked_against_the_dynamic_layers():
    # micro: 8 layers, dynamic from layer 2 (6 dynamic), target_share 0.7
    layer = {"share_constraint": "layer", "target_share": 0.75}
    fits = [0.2, 0.2, 0.8, 0.8, 1, 1]
    validate_config(_micro(dllm={**layer, "layer_rate_profile": fits}))
    msg = _error(_micro(dllm={**layer, "layer_rate_profile": [0.5, 0.5]}))
    assert "'dllm'" in msg and "6 dynamic layers" in msg and "base.pretrain.num_layers" in msg
    msg = _error(_micro(dllm={**layer, "layer_rate_profile": [0.5] * 6}))
    assert "not target_share 0.75" in msg
    msg = _error(_micro(dllm={"share_constraint": "batch", "layer_rate_profile": fits}))
    assert "'dllm.layer_rate_profile'" in msg and "'layer'" in msg
