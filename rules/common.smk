# Config validation, wildcard constraints and input functions shared by every stage.
import os
import sys
from pathlib import Path

# The workflow scripts import `spadec` from this checkout even when it is not installed
# (e.g. `--sdm conda`, whose environment cannot hold an editable install).
REPO = Path(workflow.basedir)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import re

from spadec.config import (
    ConfigError,
    SETTINGS_FILES,
    dllm_variants,
    load_schema,
    resolve_stage,
    validate_config,
)
from spadec.decoding.catalog import (
    DATA,
    DRAFTERS,
    artefact_option,
    artefact_path,
    bench_methods,
    drafter_key,
    eval_inputs,
    model_keys,
    predictor_keys,
)
from spadec.io import write_json
from spadec.smoke import parse_smoke_flag, smoke_config

SCHEMA = load_schema(REPO / "schemas" / "config.schema.yaml")
try:
    # Smoke mode (`--config smoke=true`) swaps the model, data and counts before the
    # config is validated; in place, as `config` is the dict Snakemake itself holds.
    parse_smoke_flag(config)
    if config.get("smoke") is True:
        smoked = smoke_config(config)
        config.clear()
        config.update(smoked)
    validate_config(config, REPO / "schemas" / "config.schema.yaml")
except ConfigError as err:
    sys.exit(f"Config error: {err}")

MODELS = list(config["models"])
# Jobs run on the interpreter that runs Snakemake (a venv need not be activated), except
# under `--sdm conda`, where the rule's environment provides `python`.
PYTHON = "python" if workflow.deployment_settings.deployment_method else sys.executable
# The project prompts are inputs (an edited prompt file reruns prepare_data). Run from the
# checkout (the usual case), they are named relative to it, so a moved checkout keeps the
# same input paths; with `-d` elsewhere they are absolute.
_PROMPTS = sorted((REPO / "data" / "prompts").glob("*.jsonl"))
_WORKDIR = Path.cwd().resolve()
PROMPT_FILES = [
    str(p.relative_to(_WORKDIR)) if p.is_relative_to(_WORKDIR) else str(p) for p in _PROMPTS
]

# Every job: `$SPADEC_PY` is that interpreter, `$SPADEC_SCRIPTS` the workflow_scripts/
# folder, and `spadec` is importable from this checkout, installed or not (e.g. under
# `--sdm conda`). None of them is a param, so moving the checkout or the venv does not
# rerun anything. (Snakemake formats the prefix too: `{{` below reaches bash as `{`.)
# A failing command prints one line to the console: the rule's name and the last error
# line of its log (spadec.job_errors), then the job fails with its own status. In the
# prefix, not the rules' commands: a changed command would rerun every job.
shell.prefix(
    f"export PYTHONPATH='{REPO}'${{{{PYTHONPATH:+:$PYTHONPATH}}}}; SPADEC_PY='{PYTHON}';"
    f" SPADEC_SCRIPTS='{REPO / 'workflow_scripts'}'; "
    """[ -n "$BASH_VERSION" ] && trap 'spadec_rc=$?;"""
    """ "$SPADEC_PY" -m spadec.job_errors "$BASH_COMMAND"; exit $spadec_rc' ERR; """
)


wildcard_constraints:
    model="|".join(MODELS),
    target="dense|dllm|dllm_baseline",
    dllm="dllm|dllm_baseline",
    shard=r"\d+",
    bench=r"[A-Za-z0-9_.-]+",
    stage="|".join(re.escape(s) for s in SETTINGS_FILES),


def stage_settings(model, stage):
    """Resolved settings of one stage for one model (what its config JSON holds)."""
    settings = resolve_stage(config, model, stage, SCHEMA)
    # A smoke run says so in every settings snapshot and run_info.json (a normal run's
    # settings, and so its hashes, are unchanged).
    if config["smoke"]:
        settings["smoke"] = True
    return settings


def stage_gpus(stage):
    """`gpu` resource of a stage's jobs, from the config (0 on the embedded default)."""
    return lambda wc: stage_settings(wc.model, stage).get("gpus", 0)


def script(name):
    """A thin entry point in workflow_scripts/, as the jobs' shell names it (a param that
    does not change when the checkout moves)."""
    return f"$SPADEC_SCRIPTS/{name}.py"


def target_dir(wc):
    """The target model a {target} wildcard names: the base, or a D-LLM (SpaDec's `dllm`,
    or the `dllm_baseline` of the D-LLM and Eagle2+D-LLM bars; `catalog.artefact_path`)."""
    return f"results/{wc.model}/{artefact_path(wc.target)}"


def baseline_dllm(model):
    """The D-LLM behind the dllm and eagle2_dllm methods: a separate baseline when the
    config trains one (its router input differs from SpaDec's), else SpaDec's."""
    return dllm_variants(config, model, SCHEMA)[-1]


def dllm_metrics(wc=None):
    """Every D-LLM's evaluation against its base, for all models."""
    return [
        f"results/{m}/{d}/metrics.json" for m in MODELS for d in dllm_variants(config, m, SCHEMA)
    ]


def eagle_shards(wc):
    count = stage_settings(wc.model, "eagle")["shards"]
    return expand(
        "results/{model}/eagle/{target}/data/shard_{shard}",
        model=wc.model,
        target=wc.target,
        shard=range(count),
    )


def predictor_shards(wc):
    count = stage_settings(wc.model, "predictor")["shards"]
    return expand(
        "results/{model}/{predictor}/data/shard_{shard}",
        model=wc.model,
        predictor=wc.predictor,
        shard=range(count),
    )


def predictor_drafter(wc):
    """The drafter kind whose trees the predictor `{predictor}` learns (catalog.DRAFTERS)."""
    return next(kind for kind, d in DRAFTERS.items() if d.predictor == wc.predictor)


def predictor_data_inputs(wc):
    """A predictor_data job's drafter on SpaDec's D-LLM, and Medusa's tree settings."""
    kind = predictor_drafter(wc)
    inputs = {"head": f"results/{wc.model}/{artefact_path(drafter_key(kind, 'dllm'))}"}
    if kind == "medusa":
        inputs["medusa"] = f"results/{wc.model}/config/medusa.decode.json"
    return inputs


def medusa_option(wc, input):
    return f"--medusa {input.medusa}" if "medusa" in input.keys() else ""


def benches(model):
    """Benchmarks of a model: the data stage's eval sources (data/eval_<bench>.jsonl)."""
    return list(stage_settings(model, "data")["eval"])


def eval_dirs(wc=None):
    """Every eval_speed output of the run: all models × their benchmarks."""
    return [f"results/{m}/eval/{b}" for m in MODELS for b in benches(m)]


def eval_speed_inputs(wc):
    """The artefacts an eval_speed job reads, by catalog key: the models its methods load
    (the configured ones, the other ATS mode's variants and their references:
    `catalog.bench_methods`, `catalog.eval_inputs`), and the model's data."""
    separate = baseline_dllm(wc.model) != "dllm"
    speed = stage_settings(wc.model, "eval.speed")
    ats_mode = stage_settings(wc.model, "predictor.decode")["ats_mode"]
    methods = bench_methods(speed["methods"], ats_mode, speed["compare_ats_modes"], separate)
    keys = [*eval_inputs(methods, separate), DATA]
    return {key: f"results/{wc.model}/{artefact_path(key)}" for key in keys}


def model_options(input):
    """The model artefacts among a job's inputs as eval_speed's options (--base DIR ...)."""
    return " ".join(
        f"{artefact_option(key)} {getattr(input, key)}"
        for key in model_keys()
        if key in input.keys()
    )
