#!/usr/bin/env bash
# Install sb3-ml3 (editable) with the pinned, known-good dependency set.
# Usage: bash scripts/install.sh [extras]   e.g. `bash scripts/install.sh test`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A CPU build of torch 2.13.0 is on disk on these machines; any newer torch
# pulls a multi-GB CUDA build, so install that one first where torch is missing.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
extras=${1:-}
target="."
[ -n "$extras" ] && target=".[$extras]"
# Editable on purpose: envs/ and supervised/ are mapped to sb3_ml3.envs and
# sb3_ml3.supervised, which only an editable install resolves from the source tree.
"$PY" -m pip install --quiet -e "$target" -c constraints.txt
