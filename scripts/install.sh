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
# MuJoCo frames (policy clips of `ml3 compare --render`, the README demo) need a headless GL
# library where there is no display: EGL (Mesa's renders on the CPU too) or OSMesa. Installed here
# when missing, as root with apt-get; SB3_ML3_NO_GL=1 skips this. The test suite never needs it.
if [ "$(uname -s)" = Linux ] && [ -z "${SB3_ML3_NO_GL:-}" ] && ! "$PY" -c "import ctypes.util as u, sys; \
sys.exit(0 if u.find_library('EGL') or u.find_library('OSMesa') else 1)"; then
    gl_pkgs="libegl1 libgl1-mesa-dri"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $gl_pkgs; } \
            || echo "warning: installing $gl_pkgs failed; MuJoCo envs step fine but cannot render" >&2
    else
        echo "note: no libEGL/libOSMesa found; to render MuJoCo clips: sudo apt-get install -y $gl_pkgs" >&2
    fi
fi
