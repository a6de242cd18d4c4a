"""``ml3 reacher-experts``: ML3 shaped by expert demonstrations on ReacherGoal-v0 (Sec. IV.B.4, Fig. 6c-d).

Per seed: four training targets (one per training sector) with expert demonstrations (analytic IK +
PD, :mod:`sb3_ml3.model_based.experts`); a meta-loss M_phi meta-trained with the behavioural-cloning
task loss (:mod:`sb3_ml3.model_based.reacher_experts_core`); then, on ten new targets from the
held-out sectors, fresh policies updated by M_phi alone, beside a goal-conditioned policy trained by
behavioural cloning on the same demonstrations. The table carries the reference policies of
METRICS.md, the expert as the oracle, and the tuned PPO's cited numbers (not retrained).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from sb3_ml3.atomic import jsonable
from sb3_ml3.envs.reacher import ReacherGoalEnv
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.model_based.experts import ReacherIKPDExpert, collect_demonstrations
from sb3_ml3.model_based.reacher_experts_core import (DEMO_STARTS, FEATURES, TASK_STATES, ReacherExpertsConfig,
                                                      ReacherExpertsLearner)
from sb3_ml3.model_based.reacher_experts_env import EPISODE_STEPS, GoalRollouts, one_goal_per_sector

ENV_ID = "ReacherGoal-v0"
#: evaluation reset seeds are EVAL_SEED + i for goal i, as ``ml3 compare`` and the references use them
EVAL_SEED = 12345
#: the tuned PPO on ReacherGoal-v0, cited (not retrained): BENCHMARKS.md, docs/results/reacher_tuned/
PPO_REFERENCE = {
    "label": "tuned PPO [64, 64], 300k env steps, 5 seeds x 10 held-out goals (cited, docs/results/reacher_tuned)",
    "metric": -3.42, "metric_se": 0.81, "final_distance": 0.037, "success_rate": 0.76, "env_steps": 300_000,
    "samples_to_80pct": 35_365,
    "command": "ml3 compare ReacherGoal-v0 --algos ml3 ppo trpo --seeds 0 1 2 3 4 --net-archs 64,64 128,128,128 "
               "--meta-loss 'docs/results/reacher/meta_loss_seed{seed}.zip' --render --out docs/results/reacher_tuned",
}


def first_at_or_below(x: Sequence[float], curve: Sequence[float], level: float) -> float | None:
    """The first x at which ``curve <= level`` (None if never)."""
    for xi, yi in zip(x, curve):
        if yi <= level:
            return float(xi)
    return None


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "se": float(np.std(values, ddof=1) / math.sqrt(len(values)))
            if len(values) > 1 else 0.0}


def run_seed(config: ReacherExpertsConfig, seed: int, references: bool = True,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One seed: demonstrations, meta-training, meta-test of ML3, BC, references; JSON-ready but ``"meta_loss"``."""
    cfg, t0 = config, time.time()
    learner = ReacherExpertsLearner(cfg)
    generator = torch.Generator().manual_seed(seed)
    train_goals = one_goal_per_sector("train", seed)
    test_goals = ReacherGoalEnv.sample_tasks(cfg.n_test_goals, "test", seed)
    demos = collect_demonstrations(train_goals, cfg.n_demos, seed=1000 * seed + 1,
                                   random_arm=cfg.demo_starts == "random")
    expert = ReacherIKPDExpert()
    expert_eval = {name: GoalRollouts(goals).run(expert.act, [EVAL_SEED + i for i in range(len(goals))])
                   for name, goals in (("train", train_goals), ("test", test_goals))}
    meta_loss, history = learner.meta_train(demos, generator, seed, progress)
    t_meta = time.time() - t0
    meta_train_steps = cfg.n_outer * cfg.n_train_goals * EPISODE_STEPS
    demo_labels = int(demos.states[..., 0].size)
    init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    ml3 = {name: learner.meta_test(meta_loss, goals, torch.Generator().manual_seed(init_seed), EVAL_SEED)
           for name, goals in (("test", test_goals), ("train", train_goals))}
    bc = learner.behavioural_cloning(demos, {"test": test_goals, "train": train_goals},
                                     torch.Generator().manual_seed(init_seed), EVAL_SEED)
    out: dict[str, Any] = {
        "seed": seed, "train_goals": train_goals.tolist(), "test_goals": test_goals.tolist(),
        "demo_final_distance_max": float(demos.final_distance.max()),
        "demo_fingertips": (demos.states[:, 0, :, 8:10] + demos.states[:, 0, :, 4:6]).tolist(),
        "expert": {name: {"final_distance": float(e.final_distance.mean()), "metric": float(-e.distances.sum(1).mean()),
                          "success_rate": float((e.final_distance < cfg.success_threshold).mean())}
                   for name, e in expert_eval.items()},
        "meta_train_task_loss": history["task_loss"], "skipped_meta_steps": len(history["skipped"]),
        "validation": {"step": history["validation_step"], "train_final_distance": history["validation"],
                       "kept_step": (history.get("kept_step") or [None])[0]},
        "meta_train_env_steps": meta_train_steps,
        # expert labels each method saw: BC and the "demos" task loss the demonstrations, the "rollouts" task
        # loss also every state of its meta-training rollouts
        "expert_labels": {"bc": demo_labels,
                          "ml3": demo_labels + (meta_train_steps if cfg.task_states == "rollouts" else 0)},
        "ml3": {split: {k: v.tolist() for k, v in curves.items()} for split, curves in ml3.items()},
        "bc_steps": bc["steps"].tolist(),
        "bc": {split: {k: v.tolist() for k, v in bc[split].items()} for split in ("test", "train")},
        "meta_train_s": round(t_meta, 1),
    }
    for split in ("test", "train"):
        final = ml3[split]["final_distance"]
        mean_curve = final.mean(0)
        out[f"ml3_{split}_final_distance"] = float(mean_curve[-1])
        out[f"ml3_{split}_metric"] = float(ml3[split]["metric"][:, -1].mean())
        out[f"ml3_{split}_success_rate"] = float((final[:, -1] < cfg.success_threshold).mean())
        out[f"ml3_{split}_updates_to_threshold"] = first_at_or_below(range(len(mean_curve)), mean_curve,
                                                                     cfg.success_threshold)
        bc_curve = bc[split]["final_distance"].mean(0)
        best = int(np.argmin(bc_curve))
        out[f"bc_{split}_best_final_distance"] = float(bc_curve[best])
        out[f"bc_{split}_best_step"] = int(bc["steps"][best])
        out[f"bc_{split}_best_success_rate"] = float((bc[split]["final_distance"][:, best] < cfg.success_threshold).mean())
        out[f"bc_{split}_best_metric"] = float(bc[split]["metric"][:, best].mean())
        out[f"bc_{split}_final_distance"] = float(bc_curve[-1])
    if references:
        from sb3_ml3.experiments.references import evaluate_references

        out["references"] = evaluate_references(ENV_ID, test_goals, seed=EVAL_SEED)
    out["wall_s"] = round(time.time() - t0, 1)
    out["meta_loss"] = meta_loss
    return out


def summarise(per_seed: list[dict[str, Any]], config: ReacherExpertsConfig) -> dict[str, Any]:
    """Means and standard errors over seeds, and whether the issue's goal holds (on the mean curves)."""
    s: dict[str, Any] = {"seeds": [r["seed"] for r in per_seed]}
    for key in ("ml3_test_final_distance", "ml3_test_success_rate", "ml3_test_metric", "bc_test_best_final_distance",
                "bc_test_best_success_rate", "bc_test_best_metric", "bc_test_best_step", "ml3_train_final_distance",
                "bc_train_best_final_distance", "bc_test_final_distance"):
        s[key] = _stats(np.array([r[key] for r in per_seed], dtype=float))
    ml3_curve = np.mean([np.mean(r["ml3"]["test"]["final_distance"], 0) for r in per_seed], 0)
    bc_curve = np.mean([np.mean(r["bc"]["test"]["final_distance"], 0) for r in per_seed], 0)
    steps = per_seed[0]["bc_steps"]
    s["ml3_mean_curve_updates_to_threshold"] = first_at_or_below(range(len(ml3_curve)), ml3_curve,
                                                                 config.success_threshold)
    s["ml3_mean_curve_min"] = float(ml3_curve.min())
    s["bc_mean_curve_best"] = float(bc_curve.min())
    s["bc_mean_curve_best_step"] = int(steps[int(np.argmin(bc_curve))])
    s["ml3_updates_to_bc_best"] = first_at_or_below(range(len(ml3_curve)), ml3_curve, float(bc_curve.min()))
    s["bc_mean_curve_steps_to_threshold"] = first_at_or_below(steps, bc_curve, config.success_threshold)
    reached = s["ml3_mean_curve_updates_to_threshold"]
    s["goal_met"] = bool(reached is not None and reached < s["bc_mean_curve_best_step"])
    return s


def run_reacher_experts(seeds: Sequence[int], config: ReacherExpertsConfig | None = None, references: bool = True,
                        progress: bool = False) -> dict[str, Any]:
    """All seeds; ``"meta_losses"`` ({seed: MetaLoss}) besides the JSON-ready results. Ctrl-C keeps finished seeds."""
    config = config or ReacherExpertsConfig()
    per_seed, meta_losses, interrupted = [], {}, None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.n_outer * len(seeds), desc="ml3 reacher-experts: meta-train", leave=False)
    try:
        for seed in seeds:
            row = run_seed(config, seed, references, progress=(lambda i: bar.update(1)) if bar else None)
            meta_losses[seed] = row.pop("meta_loss")
            per_seed.append(row)
    except KeyboardInterrupt:
        interrupted = seed
        if not per_seed:
            raise
    finally:
        if bar is not None:
            bar.close()
    results: dict[str, Any] = {
        "experiment": "reacher-experts", "env_id": ENV_ID, "config": jsonable(asdict(config)),
        "expert": ReacherIKPDExpert().description, "ppo_reference": PPO_REFERENCE,
        "summary": summarise(per_seed, config), "per_seed": per_seed, "meta_losses": meta_losses,
        "partial": interrupted is not None,
    }
    if interrupted is not None:
        results["interrupted_at_seed"], results["requested_seeds"] = int(interrupted), list(seeds)
    return results


COMMAND = "reacher-experts"
HELP = "ML3 shaped by expert demonstrations on ReacherGoal-v0 vs behavioural cloning (Fig. 6c-d)"
DESCRIPTION = (
    "Meta-train a loss M_phi(s, a) on four ReacherGoal-v0 training targets with the behavioural-cloning task loss "
    "on expert (IK + PD) demonstrations, then train fresh policies on ten held-out targets with M_phi alone, beside "
    "a goal-conditioned policy trained by behavioural cloning on the same demonstrations. Writes results.json, the "
    "meta-losses (weights + JSON spec), Fig. 6c (targets) and Fig. 6d (final distance over updates)."
)
QUICK = dict(n_outer=150, test_updates=30, bc_steps=300, bc_eval_every=10, n_test_goals=4, n_demos=2)


def add_arguments(p: Any) -> None:
    """The options of ``ml3 reacher-experts``."""
    from sb3_ml3.cli_args import add_common, positive_float, positive_int
    from sb3_ml3.cli_args import seed as seed_type

    d = ReacherExpertsConfig()
    p.add_argument("--out", required=True, help="output folder for results.json, the meta-losses and the figures")
    p.add_argument("--seeds", type=seed_type, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-outer", type=positive_int, default=None, help=f"outer steps per meta-loss ({d.n_outer})")
    p.add_argument("--inner-lr", type=positive_float, default=d.inner_lr, help="alpha, also the meta-test step")
    p.add_argument("--meta-lr", type=positive_float, default=d.meta_lr, help="eta, the outer (Adam) step")
    p.add_argument("--reset-every", type=positive_int, default=d.reset_every, help="inner steps before a policy reset")
    p.add_argument("--test-updates", type=positive_int, default=None, help=f"meta-test updates ({d.test_updates})")
    p.add_argument("--bc-steps", type=positive_int, default=None, help=f"Adam steps of the BC baseline ({d.bc_steps})")
    p.add_argument("--bc-lr", type=positive_float, default=d.bc_lr, help="the BC baseline's Adam step size")
    p.add_argument("--meta-form", choices=["quadratic", "mlp"], default=d.meta_form,
                   help="w(s)||a - t(s)||^2 with a learned target and weight (default) or an MLP of (s, a)")
    p.add_argument("--features", choices=list(FEATURES), default=d.features,
                   help="what policies and the meta-loss read: the scaled observation (default, the paper's) or "
                        "arm-frame (the observation in the upper arm's frame: no shoulder angle, no goal bearing)")
    p.add_argument("--demo-starts", choices=list(DEMO_STARTS), default=d.demo_starts,
                   help="demonstrations from ReacherGoal's reset (default) or from random arms over the joint space")
    p.add_argument("--task-states", choices=list(TASK_STATES), default=d.task_states,
                   help="the BC task loss on the demonstrations (default) or on the meta-training rollouts' states, "
                        "labelled by querying the expert (DAgger-style; the expert labels each method saw are "
                        "recorded)")
    p.add_argument("--rollout-starts", choices=list(DEMO_STARTS), default=d.rollout_starts,
                   help="meta-training rollouts from ReacherGoal's reset (default) or from random arms; meta-test "
                        "always starts from the reset")
    p.add_argument("--val-every", type=int, default=d.val_every,
                   help="keep-best: meta-test on the training targets every this many outer steps and keep the best "
                        "meta-loss (0: off, the final one is kept)")
    p.add_argument("--n-demos", type=positive_int, default=None,
                   help=f"expert episodes per training target ({d.n_demos})")
    p.add_argument("--no-references", action="store_true", help="skip the reference policies (tests)")
    p.add_argument("--quick", action="store_true", help="a tiny version (about a minute): a smoke test")
    add_common(p, resumable=False)


def run(args: Any) -> dict[str, Any]:
    """``ml3 reacher-experts``: run, save the meta-losses and figures, print the table."""
    import os

    from sb3_ml3.experiments.store import prepare_out_dir
    from sb3_ml3.model_based.reacher_experts_report import format_table, plot_reacher_experts

    settings: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("n_outer", "test_updates", "bc_steps", "n_demos"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    config = ReacherExpertsConfig(inner_lr=args.inner_lr, meta_lr=args.meta_lr, reset_every=args.reset_every,
                                  bc_lr=args.bc_lr, meta_form=args.meta_form, features=args.features,
                                  demo_starts=args.demo_starts, task_states=args.task_states,
                                  rollout_starts=args.rollout_starts, val_every=args.val_every, **settings)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    prepare_out_dir(args.out, force=args.force)
    results = run_reacher_experts(seeds, config, references=not args.no_references, progress=not args.no_progress)
    meta_losses: dict[int, MetaLoss] = results.pop("meta_losses")
    results["meta_loss_files"] = []
    for seed, meta_loss in meta_losses.items():
        path = os.path.join(args.out, f"meta_loss_seed{seed}.zip")
        meta_loss.save(path)
        results["meta_loss_files"].append(path)
    results["figures"] = plot_reacher_experts(results, args.out)
    results["table"] = format_table(results)
    if results.get("partial"):
        print(f"interrupted at seed {results['interrupted_at_seed']}: results of the finished seeds only (partial)")
    print(results["table"])
    return results


__all__ = ["COMMAND", "HELP", "DESCRIPTION", "PPO_REFERENCE", "add_arguments", "run", "run_reacher_experts",
           "run_seed", "summarise", "first_at_or_below"]
