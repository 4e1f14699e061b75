#!/usr/bin/env bash
# The main job: the embedded default (config.yaml) end to end, on this machine's CPUs.
#   bash scripts/run.sh                 # installs .venv if needed, then the whole DAG
#   bash scripts/run.sh --dry-run       # any further arguments go to snakemake
# A finished run makes a second call a no-op; a killed one resumes from its checkpoints.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
# Past the base model the DAG has two to three independent branches (the two D-LLMs; the
# dense, dllm and dllm_baseline EAGLE and Medusa heads), and the default's models are too small for
# torch to use several cores well: jobs there get half the cores each, so two run side by
# side. prepare_base (alone in the DAG) and eval_speed (timed, alone) keep every core.
half=$(($(nproc) / 2 > 0 ? $(nproc) / 2 : 1))
parallel_rules=(finetune_dllm merge_lora convert_hf eval_dllm distill eagle_data train_eagle
    train_medusa predictor_data train_predictor)
exec .venv/bin/snakemake --cores all --set-threads "${parallel_rules[@]/%/=$half}" "$@"
