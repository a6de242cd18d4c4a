#!/usr/bin/env bash
# The main demo: install sb3-ml3 and run the paper's sine-regression experiment on 5 seeds.
# Writes results/sine/{results.json,sine_meta_train.png,sine_meta_test.png,meta_loss_seed*.zip}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ml3 sine --seeds 0 1 2 3 4 --out results/sine "$@"
