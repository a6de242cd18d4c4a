#!/usr/bin/env bash
# The baseline sweep, one process at a time (ReacherGoal, PointmassGoal, then AntGoal), each env's log in
# docs/results/baselines/<env>/sweep.log. Resumable: configs whose JSON exists are skipped.
#   nohup bash docs/results/baselines/run_sweep.sh > /dev/null 2>&1 &
cd "$(dirname "$0")/../../.."
for env in ReacherGoal-v0 PointmassGoal-v0 AntGoal-v0; do
  mkdir -p "docs/results/baselines/$env"
  echo "=== $(date -Is) start $env" >> "docs/results/baselines/$env/sweep.log"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -u benchmarks/baseline_sweep.py --env "$env" \
    --out docs/results/baselines >> "docs/results/baselines/$env/sweep.log" 2>&1
  echo "=== $(date -Is) end $env (rc $?)" >> "docs/results/baselines/$env/sweep.log"
done
