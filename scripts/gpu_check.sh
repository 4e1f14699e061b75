#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network; its image has torch, transformers,
# peft and accelerate, but not deepspeed, snakemake or datasets): the GPU-marked tests and a
# short decode benchmark on CUDA, then a summary. Bounded to well under 8 minutes.
#   bash scripts/gpu_check.sh            (results under $OUT, or /tmp/spadec-gpu-check)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-/tmp/spadec-gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
  | tee -a "$out/gpu.txt"

timeout 240 "$py" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -o addopts="" \
  2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

bench_rc=0
for shape in h1024-l12 h2048-l16; do
  timeout 150 "$py" benchmarks/ar_vs_generate.py --random "$shape" --device cuda --dtype bfloat16 \
    --prompts 6 --max-new-tokens 128 --out "$out/decode_$shape.json" || bench_rc=1
done

echo "=== summary ==="
cat "$out/gpu.txt"
tail -n 1 "$out/gpu_tests.log"
for f in "$out"/decode_*.json; do
  [ -f "$f" ] && "$py" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["model"], r["dtype"], "ar", r["ar_tokens_per_s"], "tok/s; generate", r["generate_tokens_per_s"], "tok/s; ratio", r["ar_over_generate"], "; outputs agree", r["outputs_agree"], "/", r["prompts"])' "$f"
done
exit $(( tests_rc != 0 || bench_rc != 0 ))
