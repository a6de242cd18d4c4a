"""How good is the meta-loss at each point of meta-training? (the case for meta-validation)

Meta-trains one loss (the env's recipe, meta-validation off), keeps a copy of phi every
``--every`` env steps, then meta-tests every copy with a fresh policy on the train-split validation
goals and on the held-out test goals (the same goals ``ml3 compare`` uses), and prints the task
metric after 2k/4k/.../``--test-steps`` env steps. If the final loss is not the best copy, picking a
copy by its validation score (``MetaValidationCallback``) pays.

    python benchmarks/meta_loss_snapshots.py --seed 1 --every 50000 --test-steps 10000
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from sb3_ml3.experiments import (EVAL_SEED, TASK_SEED, TaskMetricCallback, build_model, initial_policy_state,
                             load_initial_policy, make_train_env, policy_kwargs_for, settings_for)
from sb3_ml3.envs import sample_tasks
from sb3_ml3.ml3 import ML3
from sb3_ml3.ml3.callbacks import VALIDATION_TASK_SEED


class Snapshots(BaseCallback):
    """A copy of the meta-loss every ``every`` env steps (between rollouts)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.next = every
        self.snapshots: list[tuple[int, object]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next:
            self.snapshots.append((self.num_timesteps, copy.deepcopy(self.model.meta_loss)))
            self.next += self.every

    def _on_training_end(self) -> None:
        self.snapshots.append((self.num_timesteps, copy.deepcopy(self.model.meta_loss)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="ReacherGoal-v0")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--meta-train-steps", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=50_000)
    parser.add_argument("--test-steps", type=int, default=10_000)
    parser.add_argument("--net-arch", default="128,128,128", help="policy of the meta-tests")
    parser.add_argument("--json", default=None, help="write the numbers there")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net_arch = [int(w) for w in args.net_arch.split(",") if w]
    settings = settings_for("ml3", args.env)
    env = make_train_env(args.env, settings["n_envs"], args.seed, split="train")
    model = ML3("MlpPolicy", env, meta_train=True, seed=args.seed,
                policy_kwargs=policy_kwargs_for(settings["meta_train_net_arch"]), **settings["meta_train"])
    snapshots = Snapshots(args.every)
    start = time.time()
    model.learn(args.meta_train_steps, callback=snapshots)
    print(f"{args.env} seed {args.seed}: meta-trained {args.meta_train_steps} steps in {time.time() - start:.0f}s")
    schedule = sorted({0, *range(2_000, args.test_steps, 2_000), args.test_steps})
    goals = {"validation": sample_tasks(args.env, 10, "train", seed=VALIDATION_TASK_SEED),
             "test": sample_tasks(args.env, 10, "test", seed=TASK_SEED)}
    split = {"validation": "train", "test": "test"}
    rows = []
    print("metric after " + ", ".join(f"{s}" for s in schedule) + " meta-test env steps")
    for step, loss in snapshots.snapshots:
        row = {"meta_train_steps": step}
        for name in ("validation", "test"):
            test_env = make_train_env(args.env, settings["n_envs"], args.seed, split=split[name])
            policy = build_model("ml3", test_env, args.seed, settings, net_arch, loss)
            load_initial_policy(policy, initial_policy_state(test_env, args.seed, net_arch))
            metric = TaskMetricCallback(args.env, goals[name], schedule, EVAL_SEED)
            policy.learn(args.test_steps, callback=metric)
            row[name] = metric.finish().mean(axis=1).round(3).tolist()
            test_env.close()
        rows.append(row)
        print(f"  snapshot @ {step:>7}: validation " + " ".join(f"{v:7.2f}" for v in row["validation"])
              + "   test " + " ".join(f"{v:7.2f}" for v in row["test"]), flush=True)
    best = max(rows, key=lambda r: np.mean(r["validation"][1:]))
    print(f"best by validation: snapshot @ {best['meta_train_steps']} (test {best['test'][-1]:.2f}); "
          f"final: test {rows[-1]['test'][-1]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "schedule": schedule, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
