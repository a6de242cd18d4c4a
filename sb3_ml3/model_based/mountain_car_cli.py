"""``ml3 mountain-car``: loss shaping with intermediate goals (paper Sec. IV.B.3, Fig. 6a-b).

Runs :mod:`sb3_ml3.model_based.mountain_car_experiment` over seeds, saves each meta-loss (MetaLoss zip:
JSON spec + weights), writes results.json (by ``ml3``'s main), the reference policies of METRICS.md,
the Fig. 6b curves, the trajectory figure (Fig. 6a) and a GIF of the car on the hill.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from sb3_ml3.atomic import jsonable
from sb3_ml3.envs.mountain_car import MAX_FORCE, numpy_step
from sb3_ml3.inner_optimizers import INNER_OPTIMIZERS
from sb3_ml3.model_based.mountain_car import META_FORMS, POLICY_INITS, POLICY_KINDS, TASK_NORMS, MountainCarConfig
from sb3_ml3.model_based.mountain_car_experiment import METHODS, run_seed, summarise

COMMAND = "mountain-car"
HELP = "loss shaping with intermediate goals on MountainCarGoal: shaped ML3 vs ML3 vs iLQR vs GD (Fig. 6a-b)"
DESCRIPTION = (
    "Meta-train a learned loss M_phi(tau, g) through MountainCarGoal's exact differentiable dynamics (Alg. 3), "
    "once with the shaped task loss (an intermediate goal at -0.95 for the first 15 of 35 steps, then the goal "
    "0.5) and once with the unshaped one (the goal throughout). Meta-test fresh policies on M_phi alone from "
    "train and unseen start states, beside box-constrained iLQR and GD on the unshaped task loss."
)
LABELS = {"ml3_shaped": "ML3, shaped task loss", "ml3_unshaped": "ML3, unshaped task loss",
          "gd_unshaped": "GD on the unshaped task loss", "ilqr": "iLQR (box-constrained)"}
COLORS = {"ml3_shaped": "tab:green", "ml3_unshaped": "tab:blue", "gd_unshaped": "tab:orange", "ilqr": "tab:red"}
QUICK = dict(n_outer=3, batch_tasks=4, inner_steps=2, test_updates=2, baseline_updates=3, gd_lrs=(1.0,),
             train_eval_starts=(-0.55,), test_starts=(-0.7,))


def reference_policies(config: MountainCarConfig, starts: list[float]) -> dict[str, list[float]]:
    """Final distances of the METRICS.md references: zero, constant +-max force, and energy pumping (the oracle)."""
    policies = {"zero action": lambda s: 0.0, "constant +0.25": lambda s: MAX_FORCE, "constant -0.25": lambda s: -MAX_FORCE,
                "energy pumping a = 0.25 sign(v), left at rest (oracle)": lambda s: MAX_FORCE if s[1] > 0 else -MAX_FORCE}
    out = {}
    for name, policy in policies.items():
        finals = []
        for x0 in starts:
            s = np.array([x0, 0.0])
            for _ in range(config.horizon):
                s = numpy_step(s, np.array([policy(s)]))
            finals.append(abs(float(s[0]) - config.goal))
        out[name] = finals
    return out


def add_arguments(p: Any) -> None:
    """The options of ``ml3 mountain-car``."""
    from sb3_ml3.cli_args import add_common, positive_float, positive_int
    from sb3_ml3.cli_args import seed as seed_type

    d = MountainCarConfig()
    p.add_argument("--out", required=True, help="output folder for results.json, the meta-losses and the figures")
    p.add_argument("--seeds", type=seed_type, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-outer", type=positive_int, default=None, help=f"outer steps per meta-loss ({d.n_outer})")
    p.add_argument("--inner-steps", type=positive_int, default=None, help=f"K inner steps per outer step ({d.inner_steps})")
    p.add_argument("--inner-lr", type=positive_float, default=d.inner_lr, help="alpha, also the meta-test step")
    p.add_argument("--inner-optimizer", choices=list(INNER_OPTIMIZERS), default=d.inner_optimizer,
                   help="the inner step's rule: the paper's sgd, or adam (--inner-lr is then its step size)")
    p.add_argument("--adam-eps", type=positive_float, default=d.adam_eps, help="eps of the adam inner step")
    p.add_argument("--meta-lr", type=positive_float, default=d.meta_lr, help="eta, the outer (Adam) step")
    p.add_argument("--horizon", type=positive_int, default=d.horizon, help="T, steps of every unroll (paper: 35)")
    p.add_argument("--test-updates", type=positive_int, default=None, help=f"policy updates at meta-test ({d.test_updates})")
    p.add_argument("--baseline-updates", type=positive_int, default=None,
                   help=f"iLQR iterations and GD steps ({d.baseline_updates})")
    p.add_argument("--meta-form", choices=list(META_FORMS), default=d.meta_form, help="family of M_phi")
    p.add_argument("--policy", choices=list(POLICY_KINDS), default=d.policy,
                   help="policy class: a tanh MLP of (x, v, g), or linear state feedback (the authors' code)")
    p.add_argument("--task-state", choices=["position", "state"], default=d.task_state,
                   help="task loss on the position only, or on (x, v) with the authors' goal velocities")
    p.add_argument("--task-norm", choices=list(TASK_NORMS), default=d.task_norm,
                   help="reduce the per-step distances by their mean, or by each segment's Frobenius norm (authors')")
    p.add_argument("--policy-init", choices=list(POLICY_INITS), default=d.policy_init,
                   help="fresh policies every outer step, or one fixed draw per seed used at meta-train and meta-test "
                        "(the authors' protocol)")
    p.add_argument("--gd-lrs", type=positive_float, nargs="+", default=None,
                   help=f"step sizes of GD on the unshaped loss, picked on train starts ({' '.join(map(str, d.gd_lrs))})")
    p.add_argument("--policy-hidden", type=positive_int, default=None,
                   help=f"hidden width of the mlp and deep-linear policies ({d.policy_hidden}; the authors': 200)")
    p.add_argument("--meta-restarts", type=positive_int, default=None,
                   help="independent meta-trainings per loss; the one with the lowest final meta-train task loss is "
                        f"kept ({d.meta_restarts})")
    p.add_argument("--batch-tasks", type=positive_int, default=None, help=f"B start states per outer step ({d.batch_tasks})")
    p.add_argument("--meta-hidden", type=positive_int, nargs="+", default=None,
                   help=f"hidden widths of M_phi ({' '.join(map(str, d.meta_hidden_sizes))}; the authors': 400 400)")
    p.add_argument("--meta-activation", choices=["tanh", "relu", "elu"], default=d.meta_activation,
                   help="hidden activation of M_phi (the authors': elu)")
    p.add_argument("--inner-max-grad-norm", type=clip_norm, default=d.inner_max_grad_norm,
                   help="each policy's inner gradient is clipped to this norm; 'none' for no clip (the authors')")
    p.add_argument("--train-start-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help=f"meta-train starts x_0 ~ U[LOW, HIGH] at rest ({d.train_start_range[0]} {d.train_start_range[1]})")
    p.add_argument("--train-eval-starts", type=float, nargs="+", default=None,
                   help=f"meta-test starts inside that range ({' '.join(map(str, d.train_eval_starts))})")
    p.add_argument("--test-starts", type=float, nargs="+", default=None,
                   help=f"meta-test starts outside it, never seen ({' '.join(map(str, d.test_starts))})")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds): a smoke test of the installation")
    add_common(p, resumable=False)


def clip_norm(text: str) -> float | None:
    """An argparse type: a positive, finite gradient-norm bound, or ``none`` (no clip)."""
    from sb3_ml3.cli_args import positive_float

    return None if text.strip().lower() == "none" else positive_float(text)


def run(args: Any) -> dict[str, Any]:
    """``ml3 mountain-car``: run every seed, save the meta-losses and figures, print the table."""
    import torch

    from sb3_ml3.experiments.store import prepare_out_dir

    settings: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("n_outer", "inner_steps", "test_updates", "baseline_updates", "batch_tasks", "policy_hidden",
                 "meta_restarts"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.gd_lrs is not None:
        settings["gd_lrs"] = tuple(args.gd_lrs)
    if args.meta_hidden is not None:
        settings["meta_hidden_sizes"] = tuple(args.meta_hidden)
    for name in ("train_start_range", "train_eval_starts", "test_starts"):
        if getattr(args, name) is not None:
            settings[name] = tuple(getattr(args, name))
    config = MountainCarConfig(inner_lr=args.inner_lr, meta_lr=args.meta_lr, horizon=args.horizon,
                               meta_form=args.meta_form, policy=args.policy, task_state=args.task_state,
                               task_norm=args.task_norm, policy_init=args.policy_init,
                               meta_activation=args.meta_activation, inner_max_grad_norm=args.inner_max_grad_norm,
                               inner_optimizer=args.inner_optimizer, adam_eps=args.adam_eps,
                               **settings)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    prepare_out_dir(args.out, force=args.force)
    torch.set_num_threads(args.threads)
    total, done, t0 = 2 * config.n_outer * config.meta_restarts * len(seeds), [0], time.perf_counter()

    def tick() -> None:
        done[0] += 1
        if not args.no_progress and (done[0] % 10 == 0 or done[0] == total):
            print(f"meta-train step {done[0]}/{total}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    per_seed = []
    for seed in seeds:
        result = run_seed(config, seed, tick)
        for variant, meta_loss in result.pop("meta_losses").items():
            meta_loss.save(os.path.join(args.out, f"meta_loss_{variant}_seed{seed}.zip"))
        per_seed.append(result)
    results = {"experiment": COMMAND, "config": jsonable(asdict(config)), "per_seed": per_seed,
               "summary": summarise(config, per_seed), "wall_seconds": time.perf_counter() - t0,
               "references": {split: reference_policies(config, list(starts)) for split, starts in
                              (("train", config.train_eval_starts), ("test", config.test_starts))}}
    from sb3_ml3.model_based.mountain_car_plots import plot_all

    results["figures"] = plot_all(results, args.out)
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """Per seed and split: the mean final distance |x_T - g| after test_updates updates, per method."""
    cfg, s = results["config"], results["summary"]
    head = " | ".join(f"{m:>12}" for m in METHODS)
    lines = [f"final distance to the goal after {cfg['test_updates']} updates (mean over starts; success = under "
             f"{cfg['success_threshold']}):", f"  split  seed | {head}"]
    for split in ("train", "test"):
        for r in results["per_seed"]:
            lines.append(f"  {split:5}  {r['seed']:4} | " + " | ".join(
                f"{np.mean(r[f'final_{split}_{m}']):12.3f}" for m in METHODS))
        lines.append(f"  {split:5}  mean | " + " | ".join(f"{s[f'mean_final_distance_{split}_{m}']:12.3f}" for m in METHODS))
        lines.append(f"  {split:5}  succ | " + " | ".join(f"{s[f'success_{split}_{m}']:12.2f}" for m in METHODS))
    lines.append(f"goal (only shaped ML3 under {cfg['success_threshold']} from every start within "
                 f"{cfg['test_updates']} updates): {'met' if s['goal_met'] else 'NOT met'}")
    return "\n".join(lines)


__all__ = ["COMMAND", "HELP", "DESCRIPTION", "add_arguments", "run", "format_table", "reference_policies"]
