"""``ml3 <experiment>``: run an experiment of the paper, write ``results.json`` and its figures."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small networks run fastest and repeat exactly)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_sine(subparsers: argparse._SubParsersAction) -> None:
    from sb3_ml3.supervised.sine import SineConfig

    defaults = SineConfig()
    p = subparsers.add_parser(
        "sine",
        help="sine regression (paper Sec. IV.A.1, Fig. 2 top)",
        description="Meta-train a learned loss on y = sin(x - pi) and meta-test it on 10 new sine tasks, "
        "beside SGD on the MSE task loss.",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    p.add_argument("--out", required=True, help="output folder for results.json and the PNG figures")
    p.add_argument("--n-outer", type=int, default=defaults.n_outer, help="outer (meta-train) iterations")
    p.add_argument("--inner-lr", type=float, default=defaults.inner_lr, help="inner step size alpha")
    p.add_argument("--meta-lr", type=float, default=defaults.meta_lr, help="outer step size eta")
    p.add_argument("--test-steps", type=int, default=defaults.test_steps, help="gradient steps at meta-test")
    p.add_argument("--inner-steps", type=int, default=defaults.inner_steps, help="K unrolled inner steps")
    p.add_argument("--reset-every", type=int, default=defaults.reset_every,
                   help="inner steps before the optimizee is re-initialised (M)")
    p.add_argument("--first-order", action="store_true", help="first-order meta-gradient through K steps")
    p.add_argument("--evaluate-on", choices=["query", "support"], default=defaults.evaluate_on,
                   help="measure MSE on held-out query points (default) or on the training points (paper's code)")
    p.add_argument("--test-input-range", type=float, nargs=2, default=defaults.test_input_range,
                   metavar=("LOW", "HIGH"), help="x range of the meta-test tasks")
    p.add_argument("--compile", action="store_true", help="torch.compile the outer step (faster after ~30 s)")
    _add_common(p)
    p.set_defaults(run=_run_sine)


def _run_sine(args: argparse.Namespace) -> dict[str, Any]:
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
    results = run_sine(args.seeds, config, progress=not args.no_progress)
    meta_losses = results.pop("meta_losses")
    for seed, meta_loss in meta_losses.items():
        meta_loss.save(os.path.join(args.out, f"meta_loss_seed{seed}.zip"))
    results["figures"] = plot_sine(results, args.out)
    s = results["summary"]
    print(
        f"sine, {len(args.seeds)} seeds: final meta-test MSE  ML3 {s['mean_final_mse_ml3']:.4f}  "
        f"task loss {s['mean_final_mse_task_loss']:.4f}  ratio {s['ratio_ml3_over_task_loss']:.3f}"
        + (f"  (skipped meta-steps: {s['skipped_meta_steps']})" if s["skipped_meta_steps"] else "")
    )
    return results


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="ML3 beside PPO (and TRPO) on held-out goals with the paper's metric (Fig. 4, METRICS.md)",
        description="Meta-test a learned loss (given, or meta-trained first on the train goals) on held-out goals "
        "beside PPO/TRPO: same env, tasks, seeds, budget and initial policies. Writes results.json, "
        "compare_curves.csv, learning-curve PNGs and prints samples to 50%%/80%%, the ratio and the break-even.",
    )
    p.add_argument("env_id", help="a goal env, e.g. PointmassGoal-v0, ReacherGoal-v0, AntGoal-v0")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--meta-loss", default=None, help="a meta-loss file (ML3.save_meta_loss), or one per seed with {seed} in the path "
                   "(e.g. results/reacher/meta_loss_seed{seed}.zip); default: meta-train one per seed")
    p.add_argument("--meta-train-steps", type=int, default=None,
                   help="env steps of meta-training per seed when no --meta-loss is given (default: per env)")
    p.add_argument("--meta-train-samples", type=int, default=None,
                   help="meta-train env steps of a given --meta-loss, if its file does not record them (break-even)")
    p.add_argument("--algos", nargs="+", default=["ml3", "ppo"], choices=["ml3", "ppo", "trpo"],
                   help="algorithms (default: ml3 ppo); PPO is the reference of the metrics")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1 2 3 4; --quick: 0)")
    p.add_argument("--n-tasks", type=int, default=10, help="held-out goals (default 10)")
    p.add_argument("--timesteps", type=int, default=None, help="env steps per run (default: per env)")
    p.add_argument("--eval-every", type=int, default=None, help="env steps between evaluations (default: per env)")
    p.add_argument("--net-archs", nargs="+", default=["64,64"],
                   help="policy architectures, e.g. 64,64 128,128,128 (the same loss on each: Fig. 4c-d)")
    p.add_argument("--task-mode", choices=["distribution", "per_task"], default="distribution",
                   help="one goal-conditioned run on the test goal region (default), or one run per held-out goal")
    p.add_argument("--hyperparams", default=None,
                   help='JSON overrides of the settings tables, e.g. \'{"ppo": {"n_epochs": 5}, '
                   '"ml3": {"meta_test": {"learning_rate": 0.003}}}\'')
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test in seconds")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted comparison in --out (same settings; more seeds, --net-archs or --algos "
                   "may be added): reuse its meta-losses and finished runs (runs_done.jsonl), and continue an "
                   "interrupted meta-training from its checkpoint (meta_train_seed<N>_checkpoint.zip, saved at every "
                   "meta-validation)")
    _add_common(p)
    p.set_defaults(run=_run_compare)


def _compare_outputs(results: dict[str, Any], out: str) -> dict[str, Any]:
    from sb3_ml3.compare import save_outputs

    results = save_outputs(results, out)
    print(results["table"])
    print(f"curves of every run and goal: {results['csv']}")
    return results


def _run_compare(args: argparse.Namespace) -> dict[str, Any]:
    from sb3_ml3.compare import run_compare

    try:
        hyperparams = json.loads(args.hyperparams) if args.hyperparams else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hyperparams must be JSON, e.g. '{{\"ppo\": {{\"n_epochs\": 5}}}}': {exc}") from None
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    results = run_compare(
        args.env_id, algos=args.algos, meta_loss=args.meta_loss, meta_train_steps=args.meta_train_steps,
        meta_train_samples=args.meta_train_samples, seeds=seeds, n_tasks=args.n_tasks,
        total_timesteps=args.timesteps, eval_every=args.eval_every, net_archs=args.net_archs,
        hyperparams=hyperparams, task_mode=args.task_mode, quick=args.quick, out_dir=args.out,
        resume=args.resume, progress=not args.no_progress,
    )
    return _compare_outputs(results, args.out)


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main demo: learn a loss on ReacherGoal, train a new policy architecture with it beside PPO",
        description="Meta-train a loss on ReacherGoal-v0's training goals (policy [64, 64]), meta-test it on 10 "
        "held-out goals with a policy architecture it never saw ([128, 128, 128]) beside PPO, print the "
        "samples-to-80%% table and save the figures. Full run: about 15 minutes on a laptop CPU.",
    )
    p.add_argument("--out", default="ml3_demo", help="output folder (default: ml3_demo)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1 2; --quick: 0)")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds) to check the installation")
    _add_common(p)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from sb3_ml3.compare import run_demo

    results = run_demo(quick=args.quick, out_dir=args.out, seeds=args.seeds, progress=not args.no_progress)
    return _compare_outputs(results, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml3", description="Meta-Learning via Learned Loss: the paper's experiments.")
    subparsers = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    _add_sine(subparsers)
    _add_compare(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    start = time.time()
    try:
        results = args.run(args)
    except ValueError as exc:  # bad settings: say what is wrong, no traceback
        parser.exit(2, f"ml3 {args.experiment}: error: {exc}\n")
    results["wall_time_s"] = round(time.time() - start, 2)
    results["command"] = "ml3 " + " ".join(sys.argv[1:] if argv is None else argv)
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}" + "".join(f", {fig}" for fig in results.get("figures", [])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
