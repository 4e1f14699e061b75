"""Configuration: schema validation with defaults, per-model stage resolution, hashing.

The workflow's config has stage sections (data, base, dllm, ...) with defaults, and a
`models` map whose entries override those sections key by key. `resolve_stage(config,
model, stage)` is the one place that turns the two into the settings a stage runs with.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from spadec.decoding.defaults import parse_tree_spec
from spadec.decoding.medusa_trees import named_tree
from spadec.share_targets import check_layer_profile, dynamic_layer_rate

STAGES = ("data", "base", "dllm", "eagle", "medusa", "predictor", "eval")
# Stages whose rules each read only some keys get one settings file per part
# ("eagle.train" -> results/{model}/config/eagle.train.json), so a changed knob reruns
# only the rules that read it. Keys listed under RESOURCE_KEYS size jobs (Snakemake
# resources) and never rerun anything.
STAGE_PARTS = {
    "eagle": {
        "distill": (
            "dtype",
            "distill_max_new_tokens",
            "distill_batch_size",
            "distill_temperature",
        ),
        "data": ("dtype", "shards", "feature_dtype", "data_batch_size", "max_len"),
        "train": (
            "lr",
            "micro_batch",
            "grad_accum",
            "grad_clip",
            "epochs",
            "noise_amplitude",
            "max_len",
            "heldout_fraction",
            "train_precision",
            "warmup_steps",
            "weight_decay",
            "value_weight",
            "prob_weight",
            "checkpoint_every",
            "log_every",
        ),
        "decode": ("dtype", "total_tokens", "depth", "top_k", "draft_vocab"),
    },
    "medusa": {
        "train": (
            "num_heads",
            "num_blocks",
            "own_projection",
            "lr",
            "micro_batch",
            "grad_accum",
            "grad_clip",
            "epochs",
            "max_len",
            "heldout_fraction",
            "train_precision",
            "warmup_steps",
            "weight_decay",
            "decay",
            "checkpoint_every",
            "log_every",
        ),
        "decode": ("tree", "acceptance", "typical_threshold", "typical_alpha"),
    },
    "predictor": {
        "data": ("layer_k", "shards", "prompts", "max_new_tokens"),
        "train": ("layer_k", "heldout_fraction", "lr", "weight_decay", "epochs", "draft_features"),
        "decode": ("ats_mode", "acc_length", "prune_scale"),
    },
    "eval": {
        "speed": (
            "methods",
            "compare_ats_modes",
            "max_new_tokens",
            "temperature",
            "warmup_prompts",
            "step_timing",
            "sync_timing",
            "tree_candidates",
            "tree_calibration_prompts",
        ),
        "tables": ("response_examples",),
    },
}
RESOURCE_KEYS = {
    "eagle": ("gpus", "train_gpus"),
    "medusa": ("train_gpus",),
    "predictor": ("gpus",),
    "eval": ("gpus",),
}
# The D-LLM behind the paper's D-LLM and Eagle2+D-LLM bars ("dllm_baseline") is the dllm
# stage with the baseline router input (upstream D-LLM's plain routers by default; the
# dllm stage itself is SpaDec's target, with the multi-token robust router). Each D-LLM's
# settings file holds only its own router input, so a change to one reruns only its
# stages; when both are equal the pipeline trains one D-LLM.
BASELINE_DLLM = "dllm_baseline"
SETTINGS_FILES = (
    STAGES
    + tuple(f"{stage}.{part}" for stage, parts in STAGE_PARTS.items() for part in parts)
    + (BASELINE_DLLM,)
)
DEFAULT_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message is one line naming the key or path."""


def load_schema(path: str | Path | None = None) -> dict:
    path = Path(path) if path else DEFAULT_SCHEMA
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    return data or {}


def _deref(schema: dict, root: dict) -> dict:
    """Inline a local `$ref` (siblings of the `$ref` win over the referenced schema)."""
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ConfigError(f"schema: only local $ref supported, got {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        merged = dict(target)
        merged.update({k: v for k, v in schema.items() if k != "$ref"})
        schema = merged
    return schema


def fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    """Insert schema defaults into `instance` in place, recursing into objects."""
    schema = _deref(schema, root)
    if not isinstance(instance, dict):
        return
    props = schema.get("properties", {})
    for key, sub in props.items():
        sub = _deref(sub, root)
        if key not in instance:
            if "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            elif sub.get("type") == "object" and "properties" in sub:
                instance[key] = {}
        if key in instance:
            fill_defaults(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in props:
                fill_defaults(value, extra, root)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _format_error(err, schema_root: dict) -> str:
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(_deref(err.schema, schema_root).get("properties", {}))
        unknown = sorted(set(err.instance) - allowed)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
            tip = (
                f" (did you mean '{hint[0]}'?)"
                if hint
                else f" (allowed: {', '.join(sorted(allowed))})"
            )
            return f"unknown config key '{_key(path + [unknown[0]])}'{tip}"
    return f"config key '{_key(path)}': {err.message}"


def validate_config(
    config: dict, schema_path: str | Path | None = None, check_paths: bool = True
) -> dict:
    """Validate `config` in place, fill in defaults, check referenced local paths.

    Raises ConfigError with a one-line message naming the first offending key.
    """
    import jsonschema

    schema = load_schema(schema_path)
    if not isinstance(config, dict):
        raise ConfigError("config must be a mapping")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path))
    )
    if errors:
        raise ConfigError(_format_error(jsonschema.exceptions.best_match(errors), schema))
    # Defaults go into the top-level stage sections only: per-model entries stay sparse
    # overrides, so a default cannot mask a top-level setting.
    for key, sub in schema["properties"].items():
        if key == "models":
            continue
        sub = _deref(sub, schema)
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        elif key not in config:
            config[key] = {}
        fill_defaults(config[key], sub, schema)
    for model in config["models"]:
        methods = resolve_stage(config, model, "eval", schema)["methods"]
        if "ar" not in methods:
            raise ConfigError(
                f"config key 'eval.methods' (model {model}): must include 'ar', the baseline"
                " every speedup is measured against"
            )
    for model in config["models"]:
        check_cross_fields(config, model, schema)
    if check_paths:
        for model in config["models"]:
            check_model_paths(config, model, schema)
    return config


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_stage(config: dict, model: str, stage: str, schema: dict | None = None) -> dict:
    """The settings `stage` runs with for `model`: top-level section + the model's overrides.

    `stage` may name a part ("eagle.train"): then only that part's keys (and `seed`);
    or `dllm_baseline`: the baseline D-LLM's settings."""
    if stage in ("dllm", BASELINE_DLLM):
        settings = _resolve(config, model, "dllm", schema)
        baseline_bits = settings.pop("baseline_router_input_bits")
        if stage == BASELINE_DLLM:
            settings["router_input_bits"] = baseline_bits
        return settings
    if "." in stage:
        whole, part = stage.split(".", 1)
        if part not in STAGE_PARTS.get(whole, {}):
            raise ConfigError(
                f"unknown settings part '{stage}' (one of {', '.join(SETTINGS_FILES)})"
            )
        full = resolve_stage(config, model, whole, schema)
        return {k: full[k] for k in (*STAGE_PARTS[whole][part], "seed")}
    return _resolve(config, model, stage, schema)


def _resolve(config: dict, model: str, stage: str, schema: dict | None) -> dict:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}' (one of {', '.join(STAGES)})")
    if model not in config.get("models", {}):
        raise ConfigError(
            f"unknown model '{model}' (config has: {', '.join(config.get('models', {}))})"
        )
    schema = schema or load_schema()
    resolved = deep_merge(config.get(stage, {}), (config["models"][model] or {}).get(stage, {}))
    fill_defaults(resolved, schema["$defs"][stage], schema)
    # Every stage sees one seed: the global one, offset by the stage's own where it has one.
    resolved["seed"] = resolved.get("seed", 0) + config.get("seed", 0)
    return resolved


def dllm_variants(config: dict, model: str, schema: dict | None = None) -> list[str]:
    """The D-LLMs a model's run trains: `dllm` (SpaDec's), and `dllm_baseline` when its
    router input differs."""
    settings = _resolve(config, model, "dllm", schema)
    separate = settings["baseline_router_input_bits"] != settings["router_input_bits"]
    return ["dllm", BASELINE_DLLM] if separate else ["dllm"]


def _check_file(key: str, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"config key '{key}': file not found: {path}")


def check_model_paths(config: dict, model: str, schema: dict | None = None) -> None:
    """Fail early, naming the key, when a local path the config refers to does not exist."""
    base = resolve_stage(config, model, "base", schema)
    prefix = f"models.{model}.base"
    if base["source"] == "hf":
        if bool(base.get("path")) == bool(base.get("hub_id")):
            raise ConfigError(
                f"config key '{prefix}': source 'hf' needs exactly one of 'path' or 'hub_id'"
            )
        if base.get("path"):
            path = Path(base["path"])
            if not path.is_dir():
                raise ConfigError(f"config key '{prefix}.path': model directory not found: {path}")
            if not (path / "config.json").is_file():
                raise ConfigError(f"config key '{prefix}.path': no config.json in {path}")
    data = resolve_stage(config, model, "data", schema)
    sources = {"sft": data["sft"], **{f"eval.{k}": v for k, v in data["eval"].items()}}
    for name, spec in sources.items():
        key = f"models.{model}.data.{name}"
        if spec["source"] == "hub":
            if not spec.get("hub_id"):
                raise ConfigError(f"config key '{key}': source 'hub' needs 'hub_id'")
        elif spec["source"] not in ("stdlib_docs", "heldout", "project_prompts"):
            if not spec.get("path"):
                raise ConfigError(f"config key '{key}': source '{spec['source']}' needs 'path'")
            _check_file(f"{key}.path", spec["path"])


def base_depth(config: dict, model: str, schema: dict | None = None) -> tuple[int, str] | None:
    """(number of layers, where the config says so) of a model's base, when known
    without loading it: `base.pretrain.num_layers`, or `num_hidden_layers` in the
    config.json of a local `base.path`. None for a hub id or a GGUF package."""
    base = resolve_stage(config, model, "base", schema)
    if base["source"] == "pretrain":
        return base["pretrain"]["num_layers"], "base.pretrain.num_layers"
    if base["source"] == "hf" and base.get("path"):
        config_json = Path(base["path"]) / "config.json"
        try:
            fields = json.loads(config_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # check_model_paths names a missing directory; the loader a bad file
        layers = fields.get("num_hidden_layers") if isinstance(fields, dict) else None
        if isinstance(layers, int):
            return layers, f"num_hidden_layers in {config_json}"
    return None


def check_cross_fields(config: dict, model: str, schema: dict | None = None) -> None:
    """Settings valid one by one but not together, caught at start-up rather than hours
    into a run: the draft tree's width against its size (the configured tree and the
    calibration candidates), the Medusa tree's depth against the heads, and the layer
    indices against
    the base model's depth (when the config tells it), and a D-LLM's rate profile against
    its dynamic layers. Per-model overrides apply."""
    eagle = resolve_stage(config, model, "eagle", schema)
    if eagle["top_k"] > eagle["total_tokens"]:
        raise ConfigError(
            f"config keys 'eagle.top_k' and 'eagle.total_tokens' (model {model}): top_k "
            f"{eagle['top_k']} exceeds the tree size {eagle['total_tokens']}"
        )
    medusa = resolve_stage(config, model, "medusa", schema)
    tree_depth = max(len(choice) for choice in named_tree(medusa["tree"]))
    if tree_depth > medusa["num_heads"]:
        raise ConfigError(
            f"config keys 'medusa.tree' and 'medusa.num_heads' (model {model}): tree "
            f"{medusa['tree']!r} is {tree_depth} deep, one head per level, but there are "
            f"{medusa['num_heads']} heads"
        )
    evaluation = resolve_stage(config, model, "eval", schema)
    if evaluation["tree_candidates"] and "eagle2" not in evaluation["methods"]:
        raise ConfigError(
            f"config key 'eval.tree_candidates' (model {model}): the tree is calibrated "
            "with eagle2 against ar, so eval.methods must list eagle2"
        )
    for tree in evaluation["tree_candidates"]:
        try:
            parse_tree_spec(tree)
        except ValueError as err:
            raise ConfigError(f"config key 'eval.tree_candidates' (model {model}): {err}") from None
    dllm = resolve_stage(config, model, "dllm", schema)
    if dllm["layer_rate_profile"] is not None and dllm["share_constraint"] != "layer":
        raise ConfigError(
            f"config key 'dllm.layer_rate_profile' (model {model}): needs share_constraint "
            f"'layer', not {dllm['share_constraint']!r}"
        )
    known = base_depth(config, model, schema)
    if known is None:
        return
    layers, source = known
    indices = {
        "predictor.layer_k": resolve_stage(config, model, "predictor", schema)["layer_k"],
        "dllm.dynamic_start_layer": dllm["dynamic_start_layer"],
    }
    for key, value in indices.items():
        if value >= layers:
            raise ConfigError(
                f"config key '{key}' (model {model}): {value} must be below the base "
                f"model's {layers} layers ({source})"
            )
    try:  # the sparsity targets against the number of dynamic layers
        if dllm["layer_rate_profile"] is not None:
            check_layer_profile(
                dllm["layer_rate_profile"],
                dllm["target_share"],
                layers,
                dllm["dynamic_start_layer"],
            )
        elif dllm["share_constraint"] == "layer":
            dynamic_layer_rate(dllm["target_share"], layers, dllm["dynamic_start_layer"])
    except ValueError as err:
        raise ConfigError(f"config key 'dllm' (model {model}): {err} ({source})") from None


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (stage configs, for resume checks)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
