"""Throughput of distributed model-free meta-training: 2 Ray workers over 1, beside the same tasks in one process.

The problem is ML3 meta-training a loss in PPO's family (penalty correction, Adam inner step equal to PPO's
joint update, the env's PPO recipe for rollouts and minibatches, ``VecNormalize``) with ``--tasks-per-step``
ML3 models per outer step (:func:`sb3_ml3.distributed.rl_trainer.meta_train_on_tasks`): each task collects a
rollout, takes its inner update and returns its meta-gradient, the driver averages them and steps phi.

* ``in_process``: ``workers=0``, every task in this process (no Ray);
* ``ray_1``: one Ray worker holding every task;
* ``ray_2``: two Ray workers with half the tasks each.

Throughput is env steps per second of the outer steps themselves (``ray.init`` and the actors' start-up are
reported apart; they are paid once per run). Each configuration runs ``--rounds`` times, interleaved; the
table gives medians. Also: bytes sent to and from the workers per outer step and the per-step overhead
(driver wall time minus the slowest worker's compute).

Usage:  python benchmarks/bench_distributed_rl.py --out FILE.json [--env ReacherGoal-v0] [--tasks-per-step 2]
        [--outer-steps 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch

import sb3_ml3  # noqa: F401  (registers the goal envs)
from sb3_ml3.distributed.rl_trainer import meta_train_on_tasks
from sb3_ml3.experiments import atomic_write_json, ppo_family_meta_train

def settings_for(env_id: str) -> tuple[dict, int]:
    """r7's meta-training setting (:func:`ppo_family_meta_train`) and the env steps of one rollout."""
    meta_train, n_envs = ppo_family_meta_train(env_id)
    settings = {"n_envs": n_envs, "normalize": True, "meta_train_net_arch": [64, 64], "meta_train": meta_train}
    return settings, n_envs * meta_train["n_steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results JSON (refused if it exists, unless --force)")
    parser.add_argument("--env", default="ReacherGoal-v0")
    parser.add_argument("--tasks-per-step", type=int, default=2)
    parser.add_argument("--outer-steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if args.tasks_per_step < 2 or args.outer_steps < 2 or args.rounds < 1:
        raise SystemExit("Need --tasks-per-step >= 2, --outer-steps >= 2 and --rounds >= 1.")
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"{args.out} exists: pass --force to replace it.")
    torch.set_num_threads(1)
    settings, rollout = settings_for(args.env)
    budget = args.outer_steps * rollout * args.tasks_per_step
    configs = {"in_process": 0, "ray_1": 1, "ray_2": 2}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, workers in configs.items():
            _, used, report = meta_train_on_tasks(args.env, 0, budget, settings, tasks_per_step=args.tasks_per_step,
                                                  workers=workers)
            # the first outer step has no gradient to compute (no inner update yet) and Ray's warm-up: drop it
            report["env_steps_per_s"] = (used - rollout * args.tasks_per_step) / (
                report["total_wall_s"] - report["first_step_s"])
            runs[name].append(report)
            print(f"{name}: {report['env_steps_per_s']:.0f} env steps/s, median step {report['median_step_s']:.2f} s, "
                  f"overhead {report['median_overhead_s'] * 1e3:.1f} ms")
    rate = {name: statistics.median(r["env_steps_per_s"] for r in reports) for name, reports in runs.items()}
    results = {"env_steps_per_s": rate, "ray_2_over_ray_1": rate["ray_2"] / rate["ray_1"],
               "ray_2_over_in_process": rate["ray_2"] / rate["in_process"], "runs": runs,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
               "settings": vars(args), "rollout": rollout}
    print(f"2 workers over 1: {results['ray_2_over_ray_1']:.2f}x; over one process: "
          f"{results['ray_2_over_in_process']:.2f}x; bytes per outer step: to workers "
          f"{runs['ray_2'][-1].get('bytes_to_workers')}, from workers {runs['ray_2'][-1].get('bytes_from_workers')}")
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
