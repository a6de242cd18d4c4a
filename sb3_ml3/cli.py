"""``ml3 <experiment>``: run an experiment of the paper, write ``results.json`` and its figures."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from sb3_ml3.cli_args import add_common as _add_common
from sb3_ml3.cli_args import positive_float as _positive_float
from sb3_ml3.cli_args import non_negative_int as _non_negative_int
from sb3_ml3.cli_args import positive_int as _positive_int
from sb3_ml3.cli_args import seed as _seed
from sb3_ml3.distributed.cli import add_arguments as add_distributed_arguments
from sb3_ml3.distributed.cli import distributed_settings

# Experiments that bring their own subcommand: each module exposes COMMAND, HELP, DESCRIPTION,
# add_arguments(parser) and run(args) -> results dict (written to --out/results.json by main).
EXPERIMENT_MODULES: tuple[str, ...] = ("sb3_ml3.model_based.mountain_car_cli", "sb3_ml3.supervised.digits_cli", "sb3_ml3.supervised.inverse_dynamics_cli", "sb3_ml3.supervised.shaped_sine_cli",
                                      "sb3_ml3.model_based.mbrl_cli",
                                      "sb3_ml3.model_based.reacher_experts")


def _add_sine(subparsers: argparse._SubParsersAction) -> None:
    from sb3_ml3.supervised.sine import SineConfig

    defaults = SineConfig()
    p = subparsers.add_parser(
        "sine",
        help="sine regression (paper Sec. IV.A.1, Fig. 2 top)",
        description="Meta-train a learned loss on y = sin(x - pi) and meta-test it on 10 new sine tasks, "
        "beside SGD on the MSE task loss.",
    )
    p.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    p.add_argument("--out", required=True, help="output folder for results.json and the PNG figures")
    p.add_argument("--n-outer", type=_positive_int, default=defaults.n_outer, help="outer (meta-train) iterations")
    p.add_argument("--inner-lr", type=_positive_float, default=defaults.inner_lr, help="inner step size alpha")
    p.add_argument("--meta-lr", type=_positive_float, default=defaults.meta_lr, help="outer step size eta")
    p.add_argument("--test-steps", type=_positive_int, default=defaults.test_steps, help="gradient steps at meta-test")
    p.add_argument("--inner-steps", type=_positive_int, default=defaults.inner_steps, help="K unrolled inner steps")
    p.add_argument("--reset-every", type=_positive_int, default=defaults.reset_every,
                   help="inner steps before the optimizee is re-initialised (M)")
    p.add_argument("--first-order", action="store_true", help="first-order meta-gradient through K steps")
    p.add_argument("--evaluate-on", choices=["query", "support"], default=defaults.evaluate_on,
                   help="measure MSE on held-out query points (default) or on the training points (paper's code)")
    p.add_argument("--test-input-range", type=float, nargs=2, default=defaults.test_input_range,
                   metavar=("LOW", "HIGH"), help="x range of the meta-test tasks")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="run the outer step eagerly (default: torch.compile it when --n-outer >= 1000, falling back "
                   "to eager silently where compiling fails)")
    p.add_argument("--compile", dest="compile", action="store_true", help="torch.compile the outer step even for short runs")
    p.set_defaults(compile=None)
    _add_common(p)
    add_distributed_arguments(p)
    p.set_defaults(run=_run_sine)


def _run_sine(args: argparse.Namespace) -> dict[str, Any]:
    from sb3_ml3.experiments.store import prepare_out_dir
    from sb3_ml3.plotting import plot_sine
    from sb3_ml3.supervised.sine import SineConfig, run_sine

    config = SineConfig(
        n_outer=args.n_outer,
        inner_lr=args.inner_lr,
        meta_lr=args.meta_lr,
        test_steps=args.test_steps,
        inner_steps=args.inner_steps,
        reset_every=args.reset_every,
        first_order=args.first_order,
        evaluate_on=args.evaluate_on,
        test_input_range=tuple(args.test_input_range),
        compile=args.compile,
    )
    distributed = distributed_settings(args)
    prepare_out_dir(args.out, resume=args.resume, force=args.force, extra_files=("checkpoints",))
    if distributed is None:
        results = run_sine(args.seeds, config, progress=not args.no_progress)
    else:
        from sb3_ml3.distributed.sine import DistributedSineExperiment

        experiment = DistributedSineExperiment(config, threads=args.threads,
                                               checkpoint_dir=os.path.join(args.out, "checkpoints"), **distributed)
        results = experiment.run(args.seeds, progress=not args.no_progress)
    meta_losses = results.pop("meta_losses")
    for seed, meta_loss in meta_losses.items():
        meta_loss.save(os.path.join(args.out, f"meta_loss_seed{seed}.zip"))
    results["figures"] = plot_sine(results, args.out)
    s = results["summary"]
    if results.get("partial"):
        print(f"interrupted at seed {results['interrupted_at_seed']}: results of the finished seeds only (partial)")
    print(
        f"sine, {len(args.seeds)} seeds: final meta-test MSE  ML3 {s['mean_final_mse_ml3']:.4f}  "
        f"task loss {s['mean_final_mse_task_loss']:.4f}  ratio {s['ratio_ml3_over_task_loss']:.3f}"
        + (f"  (skipped meta-steps: {s['skipped_meta_steps']})" if s["skipped_meta_steps"] else "")
    )
    return results


def _net_arch(text: str) -> list[int]:
    """argparse type: ``64,64`` -> ``[64, 64]`` with positive widths (``""`` is a linear policy)."""
    from sb3_ml3.experiments.settings import parse_net_arch

    try:
        return parse_net_arch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="ML3 beside the tuned PPO (and TRPO) on held-out goals, with reference policies (Fig. 4, METRICS.md)",
        description="Meta-test a learned loss (given, or meta-trained first on the train goals) on held-out goals "
        "beside PPO/TRPO as rl-zoo3 runs them (observation and reward normalisation): same env, tasks, seeds, "
        "budget and initial policies. The table carries the reference policies (zero, random, best constant action, "
        "an oracle where cheap) and each final policy's behaviour. Writes results.json, compare_curves.csv, "
        "learning-curve PNGs (and GIF clips with --render); prints samples to 50%%/80%% of the baseline's plateau, "
        "the ratio and the break-even. Settings per env: sb3_ml3/experiments/recipes/<env>.yml.",
    )
    p.add_argument("env_id", help="a registered goal env: PointmassGoal-v0, ReacherGoal-v0, AntGoal-v0, ...")
    p.add_argument("--out", required=True, help="output folder (refused if it holds results, unless --resume/--force)")
    p.add_argument("--meta-loss", default=None, help="a meta-loss file (ML3.save_meta_loss), or one per seed with {seed} "
                   "in the path (e.g. results/reacher/meta_loss_seed{seed}.zip); default: meta-train one per seed")
    p.add_argument("--meta-train-steps", type=_positive_int, default=None,
                   help="env steps of meta-training per seed when no --meta-loss is given (default: the recipe's)")
    p.add_argument("--meta-train-samples", type=_positive_int, default=None,
                   help="meta-train env steps of a given --meta-loss, if its file does not record them (break-even)")
    p.add_argument("--algos", nargs="+", default=["ml3", "ppo"], choices=["ml3", "ppo", "trpo"],
                   help="algorithms (default: ml3 ppo); PPO is the reference of the metrics")
    p.add_argument("--seeds", type=_seed, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-tasks", type=_positive_int, default=None, help="held-out goals (default: the recipe's, 10)")
    p.add_argument("--timesteps", type=_positive_int, default=None, help="env steps per run (default: the recipe's)")
    p.add_argument("--eval-every", type=_positive_int, default=None,
                   help="env steps between evaluations (default: the recipe's)")
    p.add_argument("--net-archs", nargs="+", type=_net_arch, default=[[64, 64]],
                   help="policy architectures, e.g. 64,64 128,128,128 (the same loss on each: Fig. 4c-d)")
    p.add_argument("--task-mode", choices=["distribution", "per_task"], default="distribution",
                   help="one goal-conditioned run on the test goal region (default), or one run per held-out goal")
    p.add_argument("--hyperparams", default=None,
                   help='JSON overrides of the recipe, e.g. \'{"ppo": {"n_epochs": 5}, '
                   '"ml3": {"meta_test": {"learning_rate": 0.003}}, "compare": {"eval_every": 1000}}\'')
    p.add_argument("--render", action="store_true",
                   help="write a GIF of each algorithm's final policy (first seed) on 3 held-out goals into --out")
    p.add_argument("--expert", default=None, help="an SB3 model file shown as the 'expert' reference row")
    p.add_argument("--meta-tasks-per-step", type=_positive_int, default=1,
                   help="meta-train each seed's loss with this many ML3 models (own envs, policies, seeds) per outer "
                   "step, averaging their meta-gradients; --meta-train-steps is the budget over all of them")
    p.add_argument("--workers", type=_non_negative_int, default=0,
                   help="Ray workers for those models (pip install -e '.[ray]'; 0: this process; same loss either way)")
    p.add_argument("--address", default=None, help="an existing Ray cluster for --workers (default: a local Ray)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test in seconds")
    _add_common(p)
    p.set_defaults(run=_run_compare)


def _compare_outputs(results: dict[str, Any], out: str) -> dict[str, Any]:
    from sb3_ml3.experiments.compare import save_outputs

    results = save_outputs(results, out)
    print(results["table"])
    print(f"curves of every run and goal: {results['csv']}")
    return results


def _hyperparams(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hyperparams must be JSON, e.g. '{{\"ppo\": {{\"n_epochs\": 5}}}}': {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--hyperparams must be a JSON object of recipe sections, got {text!r}.")
    return value


def _run_compare(args: argparse.Namespace) -> dict[str, Any]:
    from sb3_ml3.experiments.compare import run_compare

    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    if args.address is not None and not args.workers:
        raise ValueError("--address names a Ray cluster for the meta-training workers; give --workers N >= 1 with it.")
    if args.workers and importlib.util.find_spec("ray") is None:
        raise ValueError('--workers N >= 1 needs Ray: pip install -e ".[ray]".')
    if args.workers > args.meta_tasks_per_step:
        raise ValueError(f"--workers {args.workers} needs at least as many models per outer step: give "
                         f"--meta-tasks-per-step {args.workers} or more.")
    results = run_compare(
        args.env_id, algos=args.algos, meta_loss=args.meta_loss, meta_train_steps=args.meta_train_steps,
        meta_train_samples=args.meta_train_samples, seeds=seeds, n_tasks=args.n_tasks,
        total_timesteps=args.timesteps, eval_every=args.eval_every, net_archs=args.net_archs,
        hyperparams=_hyperparams(args.hyperparams), task_mode=args.task_mode, quick=args.quick, out_dir=args.out,
        resume=args.resume, force=args.force, render=args.render, expert=args.expert, progress=not args.no_progress,
        meta_tasks_per_step=args.meta_tasks_per_step, meta_workers=args.workers, address=args.address,
    )
    return _compare_outputs(results, args.out)


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main demo: learn a loss on ReacherGoal, train a new policy architecture with it beside PPO",
        description="Meta-train a loss on ReacherGoal-v0's training goals (policy [64, 64]), meta-test it on 10 "
        "held-out goals with a policy architecture it never saw ([128, 128, 128]) beside the tuned PPO, and print "
        "the honest table: reference policies, behaviour, samples to 80%% of PPO's plateau.",
    )
    p.add_argument("--out", default="ml3_demo", help="output folder (default: ml3_demo)")
    p.add_argument("--seeds", type=_seed, nargs="+", default=None, help="seeds (default: 0 1 2; --quick: 0)")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds) to check the installation")
    p.add_argument("--render", action="store_true", help="write GIF clips of the final policies into --out")
    _add_common(p)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from sb3_ml3.experiments.compare import run_demo

    results = run_demo(quick=args.quick, out_dir=args.out, seeds=args.seeds, progress=not args.no_progress,
                       resume=args.resume, force=args.force, render=args.render)
    return _compare_outputs(results, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml3", description="Meta-Learning via Learned Loss: the paper's experiments.")
    subparsers = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    _add_sine(subparsers)
    _add_compare(subparsers)
    _add_demo(subparsers)
    for name in EXPERIMENT_MODULES:
        module = importlib.import_module(name)
        p = subparsers.add_parser(module.COMMAND, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one experiment; bad settings exit with code 2 and one line saying what to do, Ctrl-C with 130
    after writing what had finished (flagged ``"partial"``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    from sb3_ml3.experiments.store import atomic_write_json

    torch.set_num_threads(args.threads)
    start = time.time()
    try:
        results = args.run(args)
    except ValueError as exc:  # bad settings: say what is wrong, no traceback
        parser.exit(2, f"ml3 {args.experiment}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"ml3 {args.experiment}: interrupted before any result was finished\n")
    results["wall_time_s"] = round(time.time() - start, 2)
    results["command"] = "ml3 " + " ".join(sys.argv[1:] if argv is None else argv)
    path = atomic_write_json(os.path.join(args.out, "results.json"), results)
    print(f"wrote {path}" + "".join(f", {fig}" for fig in results.get("figures", [])))
    return 130 if results.get("partial") else 0


if __name__ == "__main__":
    raise SystemExit(main())
