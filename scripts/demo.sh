#!/usr/bin/env bash
# The main demo: install sb3-ml3, meta-train a loss on ReacherGoal's training goals, train a policy
# architecture it never saw with it on held-out goals beside PPO, print the table and save the figures
# (results/demo/: results.json, compare_curves.csv, learning_curves.png, meta_loss_seed*.zip).
# About 30 minutes on 2 CPU cores. `bash scripts/demo.sh --quick` checks the installation in seconds;
# a second run into results/demo is refused unless you add --force (replace) or --resume (continue).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ml3 demo --out results/demo "$@"
