#!/usr/bin/env bash
# Install sb3-ml3 with its test extra and run the test suite from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,ray
exec python -m pytest "$@"
