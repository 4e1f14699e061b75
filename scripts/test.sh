#!/usr/bin/env bash
# The tests: unit and workflow tests, offline (CI runs exactly this on a clean checkout).
#   bash scripts/test.sh                 # installs .venv if needed, then pytest
#   bash scripts/test.sh tests/unit -x   # any further arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
