"""Train the expert that ``ML3(task_objective="imitation")`` imitates while meta-training.

    python benchmarks/train_expert.py AntGoal-v0 --out experts/ant_ppo_train.zip --timesteps 1500000

PPO with ``ml3 compare``'s settings for the env (``PPO_SETTINGS``), trained on the goals of the
*train* split: the goals meta-training sees, never the held-out ones that ``ml3 compare``
meta-tests on. Its samples count as meta-train samples of any loss shaped with it. The task
metric on 10 train-split goals is printed every ``--eval-every`` steps (the same deterministic
evaluation as ``ml3 compare``), with, for scale only, the metric on ``ml3 compare``'s held-out
goals: how well the expert generalises there bounds what imitating it can teach (it is never trained
on them). The model is saved at the end, as SB3's ``PPO.save``.

With ``--resume``, an expert already saved at ``--out`` continues training up to ``--timesteps`` in
all (its step count, optimizer state and schedule carry on; the env and its seed are rebuilt), so a
longer expert costs only the extra steps.
"""

from __future__ import annotations

import argparse
import os
import time

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from sb3_ml3.experiments import EVAL_SEED, TASK_SEED, build_model, make_train_env, settings_for
from sb3_ml3.envs import sample_tasks
from sb3_ml3.evaluation import evaluate_task_metric


class PrintTaskMetric(BaseCallback):
    """Print the task metric on fixed train-split goals (and on the held-out goals) every ``every`` env steps."""

    def __init__(self, env_id: str, every: int, n_goals: int = 10) -> None:
        super().__init__()
        self.env_id, self.every = env_id, every
        self.goals = sample_tasks(env_id, n_goals, "train", seed=0)
        self.held_out = sample_tasks(env_id, n_goals, "test", seed=TASK_SEED)
        self._next = 0  # set by _init_callback from the model's step count
        self._start = time.time()

    def _init_callback(self) -> None:
        self._next = (self.model.num_timesteps // self.every + 1) * self.every  # a resumed expert continues its grid

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            metric = evaluate_task_metric(self.model, self.env_id, self.goals, seed=EVAL_SEED)
            held_out = evaluate_task_metric(self.model, self.env_id, self.held_out, seed=EVAL_SEED)
            print(f"{self.num_timesteps} steps: task metric on train goals {metric.mean():.2f}, on held-out goals "
                  f"{held_out.mean():.2f} ({time.time() - self._start:.0f} s)", flush=True)
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id")
    parser.add_argument("--out", required=True, help="where to save the PPO model (.zip)")
    parser.add_argument("--timesteps", type=int, default=1_500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100_000)
    parser.add_argument("--resume", action="store_true", help="continue the expert saved at --out up to --timesteps")
    args = parser.parse_args()

    settings = settings_for("ppo", args.env_id)
    env = make_train_env(args.env_id, settings["n_envs"], args.seed, split="train")
    if args.resume:
        if not os.path.exists(args.out):
            parser.error(f"--resume: no expert at {args.out}; train one first (drop --resume).")
        model = PPO.load(args.out, env=env)
        remaining = args.timesteps - model.num_timesteps
        if remaining <= 0:
            parser.error(f"--resume: the expert at {args.out} already has {model.num_timesteps} steps; "
                         f"pass a larger --timesteps.")
        print(f"resuming at {model.num_timesteps} steps", flush=True)
    else:
        model = build_model("ppo", env, args.seed, settings, [64, 64])
        remaining = args.timesteps
    model.learn(remaining, callback=PrintTaskMetric(args.env_id, args.eval_every), reset_num_timesteps=not args.resume)
    model.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
