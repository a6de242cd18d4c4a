"""``ml3 inverse-dynamics``: the command line, table and figures of :mod:`sb3_ml3.supervised.inverse_dynamics`
(paper Sec. IV.B.2, Fig. 5c-d)."""

from __future__ import annotations

from typing import Any

from sb3_ml3.supervised.inverse_dynamics import COLORS, LABELS, VARIANTS, InverseDynamicsConfig, run_inverse_dynamics
from sb3_ml3.supervised.robots import ROBOTS

COMMAND = "inverse-dynamics"
HELP = "physics prior for learning inverse dynamics: shaped ML3 vs ML3 vs MSE on reacher and Sawyer (Fig. 5c-d)"
DESCRIPTION = (
    "Learn u = M_theta(q) q_dd + F_theta(q, q_d) (Cholesky inertia network) on simulated MuJoCo trajectories. "
    "Meta-train a loss with the shaping task loss (M_theta - M)^2 (M from mj_fullM) and one with the torque MSE "
    "task loss, then meta-test both beside SGD on the torque MSE on held-out trajectories. Writes results.json, "
    "one meta-loss file per robot, seed and variant, and the torque-error curves."
)
QUICK = dict(n_outer=30, test_steps=10, n_train_trajectories=6, n_val_tasks=1, eval_every=10, n_test_tasks=2, reset_every=10)


def add_arguments(p: Any) -> None:
    """The options of ``ml3 inverse-dynamics``."""
    from sb3_ml3.cli_args import add_common, non_negative_int, positive_float, positive_int
    from sb3_ml3.cli_args import seed as seed_type

    d = InverseDynamicsConfig()
    p.add_argument("--out", required=True, help="output folder for results.json, the meta-losses and the PNG figures")
    p.add_argument("--robots", nargs="+", default=list(d.robots), help=f"robots (default: {' '.join(d.robots)}; "
                   f"known: {' '.join(sorted(ROBOTS))})")
    p.add_argument("--seeds", type=seed_type, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-outer", type=positive_int, default=None, help=f"outer iterations per meta-loss ({d.n_outer})")
    p.add_argument("--inner-lr", type=positive_float, default=d.inner_lr, help="alpha, also the meta-test SGD step")
    p.add_argument("--meta-lr", type=positive_float, default=d.meta_lr, help="eta, the outer step")
    p.add_argument("--test-steps", type=positive_int, default=None, help=f"N gradient steps at meta-test ({d.test_steps})")
    p.add_argument("--shaped-torque-weight", type=float, default=d.shaped_torque_weight,
                   help="weight of the torque MSE added to the shaping task loss (0: pure (M_theta - M)^2)")
    p.add_argument("--n-val-tasks", type=non_negative_int, default=None,
                   help=f"meta-validation tasks from the meta-train trajectories ({d.n_val_tasks}; 0: none)")
    p.add_argument("--eval-every", type=positive_int, default=None, help=f"meta-validation interval ({d.eval_every})")
    p.add_argument("--no-keep-best", action="store_true",
                   help="with --n-val-tasks: meta-test the last meta-loss, not the one that did best at meta-validation")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds): a smoke test of the installation")
    add_common(p, resumable=False)


def run(args: Any) -> dict[str, Any]:
    """``ml3 inverse-dynamics``: run, save the meta-losses and figures, print the table."""
    import os

    from sb3_ml3.experiments.store import prepare_out_dir

    if args.shaped_torque_weight < 0:
        raise ValueError(f"--shaped-torque-weight must be >= 0, got {args.shaped_torque_weight}.")
    settings = dict(QUICK) if args.quick else {}
    for name in ("n_outer", "test_steps", "n_val_tasks", "eval_every"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if settings.get("n_val_tasks"):
        settings["keep_best"] = not args.no_keep_best
    config = InverseDynamicsConfig(robots=tuple(args.robots), inner_lr=args.inner_lr, meta_lr=args.meta_lr,
                                   shaped_torque_weight=args.shaped_torque_weight, **settings)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    prepare_out_dir(args.out, force=args.force)
    results = run_inverse_dynamics(seeds, config, progress=not args.no_progress)
    for (robot, seed, variant), meta_loss in results.pop("meta_losses").items():
        meta_loss.save(os.path.join(args.out, f"meta_loss_{robot}_{variant}_seed{seed}.zip"))
    results["figures"] = plot_inverse_dynamics(results, args.out)
    if results.get("partial"):
        at = results["interrupted_at"]
        print(f"interrupted at {at['robot']} seed {at['seed']}: results of the finished runs only (partial)")
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """Per robot and seed: torque MSE after N meta-test steps of each variant and shaped / MSE."""
    steps = results["config"]["test_steps"]
    lines = [f"held-out torque MSE (normalised) after {steps} steps: shaped ML3 | ML3 (MSE task loss) | SGD on MSE | ratio"]
    for r in results["per_seed"]:
        lines.append(f"  {r['robot']:8s} seed {r['seed']}: " + " | ".join(
            f"{r[f'final_torque_mse_{v}']:.4f}" for v in VARIANTS) + f" | {r['ratio_shaped_over_mse']:.3f}")
    for robot, s in results["summary"].items():
        lines.append(f"  {robot:8s} mean  : " + " | ".join(f"{s[f'mean_final_torque_mse_{v}']:.4f}" for v in VARIANTS)
                     + f" | {s['ratio_shaped_over_mse']:.3f}  (shaped lowest on {s['seeds_shaped_lowest']}/"
                     f"{len(s['seeds'])} seeds)")
    return "\n".join(lines)


def plot_inverse_dynamics(results: dict[str, Any], out_dir: str) -> list[str]:
    """Fig. 5c-d: held-out torque error over meta-test steps, one figure per robot (and the inertia error)."""
    import os

    from sb3_ml3.plotting import plot_curves

    os.makedirs(out_dir, exist_ok=True)
    steps = results["config"]["test_steps"]
    figures = []
    for robot in results["summary"]:
        rows = [r for r in results["per_seed"] if r["robot"] == robot]
        for key, what in (("test_trace", "torque MSE"), ("test_inertia_trace", "inertia error (M_theta - M)^2")):
            figures.append(plot_curves(
                os.path.join(out_dir, f"inverse_dynamics_{robot}{'' if key == 'test_trace' else '_inertia'}.png"),
                list(range(steps + 1)),
                {LABELS[v]: [r[f"{key}_{v}"] for r in rows] for v in VARIANTS},
                xlabel="gradient step at meta-test",
                ylabel=f"held-out {what} (normalised units)",
                title=f"{robot}: inverse dynamics at meta-test",
                colors={LABELS[v]: COLORS[v] for v in VARIANTS},
                logy=True,
                band_note=f"{results['config']['n_test_tasks']} held-out tasks averaged inside a seed",
            ))
    return figures


__all__ = ["COMMAND", "HELP", "DESCRIPTION", "QUICK", "add_arguments", "run", "format_table", "plot_inverse_dynamics"]
