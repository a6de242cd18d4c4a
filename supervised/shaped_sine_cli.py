"""``ml3 shaped-sine``: the command line, table and figures of :mod:`sb3_ml3.supervised.shaped_sine` (Fig. 5a-b)."""

from __future__ import annotations

from typing import Any

from sb3_ml3.supervised.shaped_sine import COLORS, LABELS, VARIANTS, ShapedSineConfig, run_shaped_sine

COMMAND = "shaped-sine"
HELP = "loss shaping on the sine frequency: shaped ML3 vs ML3 vs MSE from a grid of initial w (Fig. 5a-b)"
DESCRIPTION = (
    "Fit f_w(x) = sin(w x) to y = sin(v x), x in [-1, 1], N = 1000. Meta-train a loss M_phi(x, y_pred, y) with the "
    "shaping task loss (w - v)^2 and one with the MSE task loss on train frequencies, then run SGD on each (and on "
    "the MSE) from a grid of initial w on held-out and train frequencies. Writes results.json, the meta-losses, "
    "the loss landscapes (Fig. 5a), the meta-test curves (Fig. 5b) and the trajectories of w."
)
QUICK = dict(n_outer=40, test_steps=10, n_init=9, batch_tasks=16, meta_train_points=50, n_points=200,
             landscape_points=29)


def add_arguments(p: Any) -> None:
    """The options of ``ml3 shaped-sine``."""
    from sb3_ml3.cli_args import add_common, positive_float, positive_int
    from sb3_ml3.cli_args import seed as seed_type

    d = ShapedSineConfig()
    p.add_argument("--out", required=True, help="output folder for results.json, the meta-losses and the PNG figures")
    p.add_argument("--seeds", type=seed_type, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-outer", type=positive_int, default=None, help=f"outer iterations per meta-loss ({d.n_outer})")
    p.add_argument("--inner-lr", type=positive_float, default=d.inner_lr, help="alpha, also the learned losses' meta-test step")
    p.add_argument("--mse-lr", type=positive_float, default=d.mse_lr, help="the SGD step on the MSE baseline")
    p.add_argument("--meta-lr", type=positive_float, default=d.meta_lr, help="eta, the outer step (cosine-decayed)")
    p.add_argument("--test-steps", type=positive_int, default=None, help=f"SGD steps at meta-test ({d.test_steps})")
    p.add_argument("--meta-form", choices=["quadratic", "mlp"], default=d.meta_form,
                   help="meta-loss family: learned weight and offset of the residual (default) or a plain MLP")
    p.add_argument("--test-frequencies", type=float, nargs="+", default=list(d.test_frequencies),
                   help="held-out frequencies v (no meta-train v within --holdout-margin of them)")
    p.add_argument("--holdout-margin", type=float, default=d.holdout_margin, help="half-width of the held-out bands")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds): a smoke test of the installation")
    add_common(p, resumable=False)


def run(args: Any) -> dict[str, Any]:
    """``ml3 shaped-sine``: run, save the meta-losses and figures, print the table."""
    import os

    from sb3_ml3.experiments.store import prepare_out_dir

    settings: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("n_outer", "test_steps"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    config = ShapedSineConfig(inner_lr=args.inner_lr, mse_lr=args.mse_lr, meta_lr=args.meta_lr,
                              meta_lr_final=min(args.meta_lr, ShapedSineConfig.meta_lr_final), meta_form=args.meta_form,
                              test_frequencies=tuple(args.test_frequencies), holdout_margin=args.holdout_margin,
                              **settings)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    prepare_out_dir(args.out, force=args.force)
    results = run_shaped_sine(seeds, config, progress=not args.no_progress)
    for (seed, variant), meta_loss in results.pop("meta_losses").items():
        meta_loss.save(os.path.join(args.out, f"meta_loss_{variant}_seed{seed}.zip"))
    results["figures"] = plot_shaped_sine(results, args.out)
    if results.get("partial"):
        print(f"interrupted at seed {results['interrupted_at_seed']}: results of the finished seeds only (partial)")
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """Per seed: the fraction of initial w that reach |w - v| < tolerance, held-out and train v, per loss."""
    cfg = results["config"]
    lines = [f"fraction of {cfg['n_init']} initial w x {len(cfg['test_frequencies'])} v reaching |w - v| < "
             f"{cfg['tolerance']} after {cfg['test_steps']} steps:  held-out v: shaped | unshaped | MSE   "
             "train v: shaped | unshaped | MSE"]
    rows = [(f"seed {r['seed']}", r, "success_{}_{}") for r in results["per_seed"]]
    rows.append(("mean  ", results["summary"], "mean_success_{}_{}"))
    for name, r, key in rows:
        lines.append(f"  {name}: " + " | ".join(f"{r[key.format('test', v)]:.3f}" for v in VARIANTS) + "      "
                     + " | ".join(f"{r[key.format('train', v)]:.3f}" for v in VARIANTS))
    return "\n".join(lines)


def plot_shaped_sine(results: dict[str, Any], out_dir: str) -> list[str]:
    """Fig. 5a (landscapes of the first seed), Fig. 5b (mean |w_t - v| over seeds) and the w trajectories."""
    import os

    import numpy as np

    from sb3_ml3.atomic import atomic_path
    from sb3_ml3.plotting import _pyplot, plot_curves

    cfg, rows = results["config"], results["per_seed"]
    os.makedirs(out_dir, exist_ok=True)
    steps = list(range(cfg["test_steps"] + 1))
    figures = [plot_curves(
        os.path.join(out_dir, "shaped_sine_meta_test.png"), steps,
        {LABELS[v]: [r[f"trace_test_{v}"] for r in rows] for v in VARIANTS},
        xlabel="SGD step at meta-test", ylabel="|w - v| (mean over initial w and held-out v)",
        title="sine frequency: meta-test from a grid of initial w", colors={LABELS[v]: COLORS[v] for v in VARIANTS},
        logy=True, hlines={f"tolerance {cfg['tolerance']}": cfg["tolerance"]})]
    plt = _pyplot()
    w = np.linspace(*cfg["init_range"], cfg["landscape_points"])
    freqs = cfg["test_frequencies"]
    fig, axes = plt.subplots(len(VARIANTS), len(freqs), figsize=(2.2 * len(freqs), 6.0), dpi=110, squeeze=False)
    for i, variant in enumerate(VARIANTS):
        for j, v in enumerate(freqs):
            curve = np.asarray(rows[0][f"landscape_{variant}"][j])
            span = curve.max() - curve.min()
            axes[i, j].plot(w, (curve - curve.min()) / (span if span > 0 else 1.0), color=COLORS[variant])
            axes[i, j].axvline(v, color="red", linewidth=1.0)
            axes[i, j].set_yticks([])
            axes[i, j].set_title(f"v = {v}" if i == 0 else "", fontsize=8)
            axes[i, j].set_xlabel("w" if i == len(VARIANTS) - 1 else "", fontsize=8)
        axes[i, 0].set_ylabel(LABELS[variant].replace(", ", "\n"), fontsize=7)
    fig.suptitle(f"loss over w (min-max scaled), held-out frequencies (red), seed {rows[0]['seed']}", fontsize=9)
    fig.tight_layout()
    figures.append(_save(fig, os.path.join(out_dir, "shaped_sine_landscape.png"), plt, atomic_path))
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(11.0, 3.4), dpi=110, sharey=True)
    v0 = freqs[0]
    for ax, variant in zip(axes, VARIANTS):
        for trajectory in rows[0][f"trajectories_{variant}"]:
            ax.plot(steps, v0 + np.asarray(trajectory), color=COLORS[variant], linewidth=0.6, alpha=0.7)
        ax.axhline(v0, color="red", linewidth=1.0)
        ax.set_title(f"{LABELS[variant]}\nsuccess {rows[0][f'success_per_v_test_{variant}'][0]:.2f}", fontsize=8)
        ax.set_xlabel("SGD step at meta-test", fontsize=8)
    axes[0].set_ylabel(f"w (held-out v = {v0})", fontsize=8)
    fig.tight_layout()
    figures.append(_save(fig, os.path.join(out_dir, "shaped_sine_trajectories.png"), plt, atomic_path))
    return figures


def _save(fig: Any, path: str, plt: Any, atomic_path: Any) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


__all__ = ["COMMAND", "HELP", "DESCRIPTION", "QUICK", "add_arguments", "run", "format_table", "plot_shaped_sine"]
