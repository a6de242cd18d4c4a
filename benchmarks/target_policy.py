"""What a target-correction loss has learned about its task family: its target t(c) run as a policy.

A surrogate-family loss with ``correction="target"`` pulls the policy mean towards t(obs, goal)
(``MetaLoss.pull_target``). The target reads only the observation and the goal (and, if the loss has that
input, the policy's age in updates), so it is a goal-conditioned controller of its own: this script runs
it, deterministically and clipped to the action box, on the meta-test's held-out goals (or the train
split's), with the observation normalisation the loss was meta-trained with, beside the reference policies
on the same goals and start states. A loss that reads ``policy_age`` is run at ``--policy-age`` (default 0:
what it teaches a new policy), and its pull weight is printed over ages, to see whether it lets go.

    python benchmarks/target_policy.py docs/results/ppo_family/r9_target_meta_loss_seed1.zip [--split train]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from sb3_ml3.envs import sample_tasks

from sb3_ml3 import MetaLoss
from sb3_ml3.evaluation import evaluate_policy_on_goals
from sb3_ml3.experiments import TASK_SEED
from sb3_ml3.experiments.references import evaluate_references
from sb3_ml3.experiments.runs import EVAL_SEED, behaviour_summary
from sb3_ml3.surrogates import policy_age_feature

#: the policy ages (inner updates) at which the pull weight is reported
AGES = (0, 5, 10, 20, 40, 80, 150)


class TargetPolicy:
    """t(c) of a target-correction loss as an SB3-style predictor of raw observations."""

    def __init__(self, meta_loss: MetaLoss, low: float = -1.0, high: float = 1.0, policy_age: int = 0,
                 task_frame: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if meta_loss.correction != "target":
            raise SystemExit(f"this loss's correction is {meta_loss.correction!r}: only a 'target' loss has a target.")
        md = meta_loss.metadata
        norm = md.get("obs_normalization")
        self.meta_loss, self.low, self.high = meta_loss, low, high
        self.age = policy_age_feature(policy_age) if "policy_age" in meta_loss.correction_fields else None
        reads_frame = "task_frame" in meta_loss.correction_fields
        if reads_frame and task_frame is None:
            raise SystemExit("this target reads 'task_frame': pass the env's task_frame_features.")
        self.task_frame = task_frame if reads_frame else None
        self.mean = None if norm is None else np.asarray(norm["mean"])
        self.std = None if norm is None else np.sqrt(np.asarray(norm["var"]) + norm["epsilon"])
        self.clip = None if norm is None else float(norm["clip_obs"])
        start, stop = md["goal_slice"]
        self.goal = slice(start, stop)
        self.rest = np.setdiff1d(np.arange(md["observation_shape"][0]), np.arange(start, stop))

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        x = np.asarray(obs, dtype=np.float64)
        frame = None if self.task_frame is None else torch.as_tensor(self.task_frame(x), dtype=torch.float32)
        if self.mean is not None:
            x = np.clip((x - self.mean) / self.std, -self.clip, self.clip)
        fields = {"obs": torch.as_tensor(x[:, self.rest], dtype=torch.float32),
                  "goal": torch.as_tensor(x[:, self.goal], dtype=torch.float32)}
        if self.age is not None:
            fields["policy_age"] = torch.full((len(x), 1), self.age)
        if frame is not None:  # from the raw observation, as ML3 feeds it
            fields["task_frame"] = frame
        with torch.no_grad():
            target, _ = self.meta_loss.pull_target(fields)
        return np.clip(target.numpy(), self.low, self.high), None


def mean_state_weight(loss: MetaLoss, policy: TargetPolicy, age: int) -> float:
    """The pull weight w(c) at the normalised mean observation and goal (all zeros; task-frame features too), for
    a policy of ``age``."""
    fields = {"obs": torch.zeros(1, len(policy.rest)), "goal": torch.zeros(1, policy.goal.stop - policy.goal.start)}
    if policy.task_frame is not None:
        fields["task_frame"] = torch.zeros(1, dict(loss.spec.fields)["task_frame"])
    if policy.age is not None:
        fields["policy_age"] = torch.full((1, 1), policy_age_feature(age))
    with torch.no_grad():
        return float(loss.pull_target(fields)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loss", help="a meta-loss file with correction='target'")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--n-goals", type=int, default=10)
    parser.add_argument("--policy-age", type=int, default=0,
                        help="the policy's age in inner updates, for a loss that reads it (default: a new policy)")
    parser.add_argument("--json", action="store_true", help="also print every row as JSON")
    args = parser.parse_args()
    if args.policy_age < 0 or args.n_goals < 1:
        raise SystemExit("--policy-age must be >= 0 and --n-goals >= 1.")
    loss = MetaLoss.load(args.loss)
    env_id = loss.metadata["env_id"]
    goals = np.asarray(sample_tasks(env_id, args.n_goals, args.split, seed=TASK_SEED))
    policy = TargetPolicy(loss, policy_age=args.policy_age,
                          task_frame=getattr(gym.make(env_id).unwrapped, "task_frame_features", None))
    result = behaviour_summary(evaluate_policy_on_goals(policy, env_id, goals, seed=EVAL_SEED).to_dict())
    ages = AGES if policy.age is not None else (args.policy_age,)
    result["weight_at_mean_state"] = {age: mean_state_weight(loss, policy, age) for age in ages}
    result.pop("per_goal_final_distance")
    rows = {"target t(c) as a policy": result}
    rows.update({name: ref for name, ref in evaluate_references(env_id, goals, seed=EVAL_SEED).items()})
    weights = ", ".join(f"{w:.3f}" + (f" at age {age}" if policy.age is not None else "")
                        for age, w in result["weight_at_mean_state"].items())
    print(f"{env_id}, {args.n_goals} {args.split}-split goals, target at policy age {args.policy_age}; "
          f"pull weight at the mean state {weights}")
    for name, row in rows.items():
        print(f"{name:>26}: metric {row['metric']:8.3f}  final distance {row['final_distance']:.3f}  "
              f"success {row['success_rate']:.0%}  on bounds {row['saturation']:.1%}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
