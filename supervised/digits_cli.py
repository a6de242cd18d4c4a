"""``ml3 digits``: the command line and figures of the digit experiment (:mod:`sb3_ml3.supervised.digits`).

The module is registered in :data:`sb3_ml3.cli.EXPERIMENT_MODULES`; ``ml3 digits --out DIR`` writes
``DIR/results.json`` (through :func:`sb3_ml3.cli.main`), the PNG figures and ``meta_loss_seed{N}.zip``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from sb3_ml3.cli_args import add_common, positive_float, positive_int, seed
from sb3_ml3.distributed.cli import add_arguments as add_distributed_arguments
from sb3_ml3.distributed.cli import distributed_settings
from sb3_ml3.supervised.datasets import DATASETS
from sb3_ml3.supervised.digits import META_INPUTS, DigitsConfig, DigitsExperiment


# ---------------------------------------------------------------------------------------------- figures
def plot_digits(results: dict[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """Fig. 2 (bottom): meta-test error and cross-entropy over gradient steps, and the meta-validation curve."""
    from sb3_ml3.plotting import BASELINE_COLOR, ML3_COLOR, plot_curves

    per_seed = results["per_seed"]
    cfg = results["config"]
    os.makedirs(out_dir, exist_ok=True)
    colors = {"ML3 (learned loss)": ML3_COLOR, "SGD on cross-entropy": BASELINE_COLOR}
    steps = list(range(cfg["test_steps"] + 1))
    where = f"{cfg['n_test_tasks']} held-out pairs, {cfg['data']}, step size {cfg['inner_lr']:g}"
    figures = []
    for key, label, name in (("error", "test error (1 - accuracy)", "digits_meta_test_error.png"),
                             ("ce", "test cross-entropy", "digits_meta_test_ce.png")):
        figures.append(plot_curves(
            os.path.join(out_dir, name), steps,
            {"ML3 (learned loss)": [r[f"test_{key}_trace_ml3"] for r in per_seed],
             "SGD on cross-entropy": [r[f"test_{key}_trace_task_loss"] for r in per_seed]},
            xlabel="gradient step at meta-test", ylabel=f"{label}, mean over pairs",
            title=f"Digits: meta-test ({where})", colors=colors,
        ))
    iterations = per_seed[0]["meta_train_iterations"]
    if iterations:
        figures.append(plot_curves(
            os.path.join(out_dir, "digits_meta_train.png"), iterations,
            {"ML3 (learned loss)": [r["meta_train_error_ml3"] for r in per_seed],
             "SGD on cross-entropy": [[r["meta_train_error_task_loss"]] * len(iterations) for r in per_seed]},
            xlabel="outer (meta-train) iteration", ylabel=f"held-out error after {cfg['test_steps']} steps",
            title="Digits: meta-train pair (meta-validation)", colors=colors,
        ))
    return figures


# ---------------------------------------------------------------------------------------------- CLI
COMMAND = "digits"
HELP = "binary digit classification with LeNet (paper Sec. IV.A.1, Fig. 2 bottom)"
DESCRIPTION = (
    "Meta-train a learned loss on one pair of digit classes with cross-entropy as the task loss, and meta-test it "
    "on 4 other pairs beside SGD on cross-entropy at the same step size; the optimizee is a LeNet. Data: "
    "scikit-learn's bundled 8x8 digits (default, no download) or MNIST's IDX files (--data mnist --data-dir DIR). "
    "Writes results.json, the figures and one meta-loss file per seed."
)
QUICK = {"n_outer": 100, "test_steps": 20, "n_per_class": 10, "eval_every": 50}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ml3 digits``."""
    d = DigitsConfig()
    p.add_argument("--out", required=True, help="output folder for results.json, the PNG figures and the meta-losses")
    p.add_argument("--data", default=d.data, help=f"data set: {' or '.join(DATASETS)} (default: {d.data}, bundled)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (for --data mnist)")
    p.add_argument("--seeds", type=seed, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-outer", type=positive_int, default=None, help=f"outer (meta-train) iterations ({d.n_outer})")
    p.add_argument("--inner-lr", type=positive_float, default=d.inner_lr,
                   help="inner step size alpha, also the meta-test step size of ML3 and of SGD on cross-entropy")
    p.add_argument("--meta-lr", type=positive_float, default=d.meta_lr, help="outer step size eta (Adam)")
    p.add_argument("--test-steps", type=positive_int, default=None, help=f"gradient steps at meta-test ({d.test_steps})")
    p.add_argument("--n-test-tasks", type=positive_int, default=d.n_test_tasks, help="held-out digit pairs")
    p.add_argument("--n-per-class", type=positive_int, default=None,
                   help=f"training (and as many held-out) images per class of a task ({d.n_per_class})")
    p.add_argument("--meta-inputs", choices=META_INPUTS, default=d.meta_inputs,
                   help="what the meta-loss sees of the prediction, beside the one-hot label")
    p.add_argument("--reset-every", type=positive_int, default=d.reset_every,
                   help="inner steps before the optimizee is re-initialised (M)")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help=f"meta-validation interval on the meta-train pair ({d.eval_every})")
    p.add_argument("--no-keep-best", action="store_true",
                   help="meta-test the last loss rather than the one that did best at meta-validation")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds) to check the installation")
    add_common(p)
    add_distributed_arguments(p)


def config_from_args(args: argparse.Namespace) -> DigitsConfig:
    """The :class:`DigitsConfig` of parsed ``ml3 digits`` options (``--quick`` shrinks what is not given)."""
    quick = QUICK if args.quick else {}
    chosen = {"n_outer": args.n_outer, "test_steps": args.test_steps, "n_per_class": args.n_per_class,
              "eval_every": args.eval_every}
    sizes = {k: v if v is not None else quick.get(k, getattr(DigitsConfig, k)) for k, v in chosen.items()}
    if args.data == "mnist" and args.data_dir is None:
        raise ValueError("--data mnist needs --data-dir DIR holding the MNIST IDX files (nothing is downloaded).")
    if args.data != "mnist" and args.data_dir is not None:
        raise ValueError(f"--data-dir is only read with --data mnist, not with --data {args.data}.")
    return DigitsConfig(data=args.data, data_dir=args.data_dir, inner_lr=args.inner_lr, meta_lr=args.meta_lr,
                        n_test_tasks=args.n_test_tasks, meta_inputs=args.meta_inputs, reset_every=args.reset_every,
                        keep_best=not args.no_keep_best, **sizes)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``ml3 digits``: run, save the meta-losses and the figures, print the summary; returns the results."""
    from sb3_ml3.experiments.store import prepare_out_dir

    config = config_from_args(args)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    distributed = distributed_settings(args)
    if distributed is None:
        experiment = DigitsExperiment(config)
    else:
        from sb3_ml3.distributed.digits import DistributedDigitsExperiment

        experiment = DistributedDigitsExperiment(config, threads=args.threads,
                                                 checkpoint_dir=os.path.join(args.out, "checkpoints"), **distributed)
    try:
        experiment.data_for_seed(seeds[0])  # a missing or broken data set fails before anything is written
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    prepare_out_dir(args.out, resume=args.resume, force=args.force, extra_files=("checkpoints",))
    results = experiment.run(seeds, progress=not args.no_progress)
    for s, meta_loss in results.pop("meta_losses").items():
        meta_loss.save(os.path.join(args.out, f"meta_loss_seed{s}.zip"))
    results["figures"] = plot_digits(results, args.out)
    s = results["summary"]
    if results.get("partial"):
        print(f"interrupted at seed {results['interrupted_at_seed']}: results of the finished seeds only (partial)")
    print(
        f"digits ({config.data}), {len(s['seeds'])} seeds, {config.test_steps} steps at step size {config.inner_lr:g}: "
        f"test error  ML3 {s['mean_final_error_ml3']:.4f}  cross-entropy {s['mean_final_error_task_loss']:.4f}  "
        f"ratio {s['ratio_ml3_over_task_loss']:.3f}"
        + (f"  (skipped meta-steps: {s['skipped_meta_steps']})" if s["skipped_meta_steps"] else "")
    )
    return results


__all__ = ["COMMAND", "DESCRIPTION", "HELP", "QUICK", "add_arguments", "config_from_args", "plot_digits", "run"]
