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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml3", description="Meta-Learning via Learned Loss: the paper's experiments.")
    subparsers = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    _add_sine(subparsers)
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
