"""Look at the policies a saved ``ml3 reacher-experts`` meta-loss trains (issue 16 part 3, Fig. 6c-d).

The table of ``ml3 reacher-experts`` gives final distances; this script checks what the policies behind them
do before the number is believed (BENCHMARKS.md's rule): it meta-tests fresh policies with each saved loss on
that seed's held-out targets, then rolls the trained policies out once more and reports, per target, its
radius from the arm's base, the final fingertip distance, and the share of actions on the bounds (|a| >= 0.99,
ReacherGoal's actions lie in [-1, 1]); optionally it writes a clip of the first seed's policies.

    python benchmarks/reacher_experts_look.py --run docs/results/reacher_experts/keepbest_random_mlr3e-3_a \
        --out docs/results/reacher_experts/look_keepbest_a.json --clip docs/results/reacher_experts/look_keepbest_a.gif

The meta-test draws its own initial policies (seeded by the seed), so its numbers differ a little from the
run's table, which drew them after meta-training.

``--goal-seed-offset N`` draws the held-out targets with seed + N instead of the seed: a run's own held-out targets
share the random stream of its training targets (the first four have the training radii), so an offset gives
targets at radii never trained on. ``--bc`` also fits the run's BC baseline (the same demonstrations, features and
steps) and scores it on those targets, for the goal's comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from sb3_ml3.envs.reacher import ReacherGoalEnv
from sb3_ml3.experiments.clips import MAX_GOALS, RenderUnavailable, render_policy_clip
from sb3_ml3.experiments.store import atomic_write_json
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.model_based.experts import collect_demonstrations
from sb3_ml3.model_based.reacher_experts import EVAL_SEED, first_at_or_below
from sb3_ml3.model_based.reacher_experts_core import ReacherExpertsConfig, ReacherExpertsLearner
from sb3_ml3.model_based.reacher_experts_env import GoalRollouts, one_goal_per_sector

SATURATED = 0.99  # |a| at or above this counts as on the bound


class _PerGoalPolicy:
    """SB3's ``predict`` for a clip: the trained policy of whichever held-out target the observation names."""

    def __init__(self, learner: ReacherExpertsLearner, policies: dict[str, torch.Tensor], goals: np.ndarray) -> None:
        self.learner, self.policies, self.goals = learner, policies, goals

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        goal = np.asarray(obs)[0, 4:6]  # ReacherGoal's observation carries the goal at 4:6
        i = int(np.argmin(np.linalg.norm(self.goals - goal, axis=1)))
        theta = {k: v[i:i + 1] for k, v in self.policies.items()}
        return self.learner.policy_fn(theta)(np.asarray(obs, dtype=np.float64)), None


def _first_at_or_below(x: list[int], curve: np.ndarray, level: float) -> int | None:
    """:func:`first_at_or_below` of ``ml3 reacher-experts``, as an int (an update or step count) or None."""
    hit = first_at_or_below(x, curve, level)
    return None if hit is None else int(hit)


def look(run_dir: str, seeds: list[int] | None, updates: int | None, clip: str | None, goal_seed_offset: int = 0,
         bc: bool = False) -> dict[str, Any]:
    """Meta-test each saved loss of ``run_dir`` and describe the policies it trained (and BC's, with ``bc``)."""
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in results["config"].items()}
    config = ReacherExpertsConfig(**settings)
    learner = ReacherExpertsLearner(config)
    seeds = seeds if seeds is not None else [row["seed"] for row in results["per_seed"]]
    out: dict[str, Any] = {"run": run_dir, "config": results["config"], "saturation_level": SATURATED,
                           "goal_seed_offset": goal_seed_offset, "per_seed": []}
    curves, bc_curves, bc_steps = [], [], None
    for k, seed in enumerate(seeds):
        t0 = time.time()
        meta_loss = MetaLoss.load(os.path.join(run_dir, f"meta_loss_seed{seed}.zip"))
        goals = ReacherGoalEnv.sample_tasks(config.n_test_goals, "test", seed + goal_seed_offset)
        train_radius = np.linalg.norm(one_goal_per_sector("train", seed), axis=1)
        tested = learner.meta_test(meta_loss, goals, torch.Generator().manual_seed(seed), EVAL_SEED, updates,
                                   return_policies=True)
        rollouts = GoalRollouts(goals)
        episode = rollouts.run(learner.policy_fn(tested["policies"]), [EVAL_SEED + i for i in range(len(goals))])
        rollouts.close()
        on_bound = (np.abs(episode.actions) >= SATURATED).mean(axis=(1, 2))
        radius = np.linalg.norm(goals, axis=1)
        row = {"seed": seed, "radius": radius.tolist(),
               "final_distance": episode.final_distance.tolist(), "saturation": on_bound.tolist(),
               "mean_final_distance": float(episode.final_distance.mean()),
               "success_rate": float((episode.final_distance < config.success_threshold).mean()),
               "mean_saturation": float(on_bound.mean()), "ml3_curve": tested["final_distance"].mean(0).tolist(),
               "shares_a_training_radius": [bool(np.min(np.abs(train_radius - r)) < 1e-9)
                                            for r in radius]}
        curves.append(tested["final_distance"])
        if bc:
            demos = collect_demonstrations(one_goal_per_sector("train", seed), config.n_demos, seed=1000 * seed + 1,
                                           random_arm=config.demo_starts == "random")
            fitted = learner.behavioural_cloning(demos, {"test": goals}, torch.Generator().manual_seed(seed), EVAL_SEED)
            bc_steps = fitted["steps"].tolist()
            bc_curves.append(fitted["test"]["final_distance"])
            row["bc_curve"] = fitted["test"]["final_distance"].mean(0).tolist()
        row["seconds"] = round(time.time() - t0, 1)
        out["per_seed"].append(row)
        print(f"seed {seed}: final distance {row['mean_final_distance']:.4f}, success {row['success_rate']:.0%}, "
              f"actions on the bounds {row['mean_saturation']:.1%} ({row['seconds']} s)", flush=True)
        for r, d, s in zip(row["radius"], row["final_distance"], row["saturation"]):
            print(f"    target radius {r:.3f}: final distance {d:.4f}, on the bounds {s:.0%}")
        if clip and k == 0:
            try:
                out["clip"] = render_policy_clip(_PerGoalPolicy(learner, tested["policies"], goals), "ReacherGoal-v0",
                                                 goals[:MAX_GOALS], clip, seed=EVAL_SEED,
                                                 title=f"ML3 reacher-experts, seed {seed}, held-out targets")
            except RenderUnavailable as err:
                out["clip_error"] = str(err)
                print(f"no clip: {err}")
    rows = out["per_seed"]
    radius = np.concatenate([r["radius"] for r in rows])
    final = np.concatenate([r["final_distance"] for r in rows])
    level = config.success_threshold
    mean_curve = np.concatenate(curves).mean(0)
    out["summary"] = {"mean_final_distance": float(final.mean()), "success_rate": float((final < level).mean()),
                      "mean_saturation": float(np.mean([r["mean_saturation"] for r in rows])),
                      "failures_radius": radius[final >= level].tolist(),
                      "successes_radius": radius[final < level].tolist(),
                      "targets_sharing_a_training_radius": int(sum(sum(r["shares_a_training_radius"]) for r in rows)),
                      "ml3_mean_curve_final": float(mean_curve[-1]),
                      "ml3_updates_to_threshold": _first_at_or_below(list(range(len(mean_curve))), mean_curve, level)}
    if bc:
        bc_mean = np.concatenate(bc_curves).mean(0)
        best = int(np.argmin(bc_mean))
        out["summary"].update({"bc_best_final_distance": float(bc_mean[best]), "bc_best_step": int(bc_steps[best]),
                               "bc_steps_to_threshold": _first_at_or_below(bc_steps, bc_mean, level),
                               "bc_final_distance": float(bc_mean[-1])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="an `ml3 reacher-experts` output folder (results.json, meta_loss_seed*.zip)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to look at (default: all of the run)")
    parser.add_argument("--updates", type=int, default=None, help="meta-test updates (default: the run's test_updates)")
    parser.add_argument("--clip", default=None, help="a .gif of the first seed's trained policies on up to 6 targets")
    parser.add_argument("--goal-seed-offset", type=int, default=0,
                        help="draw the held-out targets with seed + this (0: the run's own targets)")
    parser.add_argument("--bc", action="store_true", help="also fit and score the run's BC baseline on those targets")
    parser.add_argument("--out", required=True, help="JSON file for the per-target numbers")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    args = parser.parse_args()
    if os.path.exists(args.out) and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    if args.updates is not None and args.updates < 1:
        parser.error("--updates must be a positive integer")
    torch.set_num_threads(1)
    out = look(args.run, args.seeds, args.updates, args.clip, args.goal_seed_offset, args.bc)
    s = out["summary"]
    print(f"all: final distance {s['mean_final_distance']:.4f}, success {s['success_rate']:.0%}, actions on the bounds "
          f"{s['mean_saturation']:.1%}; failed targets' radii {np.round(s['failures_radius'], 3).tolist()}; "
          f"{s['targets_sharing_a_training_radius']} targets share a training radius; ML3 mean curve at "
          f"{s['ml3_mean_curve_final']:.4f}, at the threshold from update {s['ml3_updates_to_threshold']}")
    if args.bc:
        print(f"BC: best {s['bc_best_final_distance']:.4f} at step {s['bc_best_step']}, at the threshold from step "
              f"{s['bc_steps_to_threshold']}, {s['bc_final_distance']:.4f} after its last step")
    atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
