"""Peak memory of one meta-gradient against the unroll length K: full, first-order, truncated, higher, TorchOpt.

Every configuration runs in a fresh process (so that no allocator cache from an earlier one hides
growth). There, after one warm-up meta-gradient with K = 1 (libraries and kernels loaded), the peak
resident set size is reset (``echo 5 > /proc/self/clear_refs``, Linux) and the figure reported is
``VmHWM - VmRSS``: the resident memory the K-step meta-gradient added at its peak, optimizer state,
graph, saved activations and all. CPU, one thread, the sine optimizee (MLP 1-40-40-1) and meta-loss of
``ml3 sine`` on a batch of ``--points`` points (1000 by default, so that one step's activations are
visible beside the process's ~300 MB).

Modes: ``full`` (the exact second-order meta-gradient, ``meta_gradient``), ``first_order``
(``first_order=True``), ``first_order_low_memory`` (``first_order=True, low_memory=True``: K freed
vector-Jacobian products), ``truncate_1`` / ``truncate_10`` (``truncate=1`` / ``10``: backpropagate
through the last 1 / 10 steps only), ``higher`` and ``torchopt`` (their users' K-step unroll,
second order).

Usage:  python benchmarks/bench_memory.py [--ks 1 10 25 50 100] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

MODES = ("full", "first_order", "first_order_low_memory", "truncate_1", "truncate_10", "higher", "torchopt")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux")


def _meta_gradient_fn(mode: str, points: int):
    """A function ``K -> None`` that computes one K-step meta-gradient in ``mode`` on the sine problem."""
    from torch.func import functional_call

    from sb3_ml3.functional import meta_gradient, parameters_of
    from sb3_ml3.supervised.core import learned_loss_fn, task_loss_fn
    from sb3_ml3.supervised.sine import SineConfig, make_meta_loss, make_optimizee, sine_task

    config = SineConfig(n_points=points)
    generator = torch.Generator().manual_seed(0)
    model, meta_loss = make_optimizee(config.hidden_sizes), make_meta_loss(config, generator)
    task = sine_task(1.0, config.train_phase, points, config.input_range, generator)
    (x, y), (xq, yq) = task.support, task.query
    learned, task_loss = learned_loss_fn(model, meta_loss), task_loss_fn(model)
    theta, lr = parameters_of(model), config.inner_lr
    meta_params = list(meta_loss.parameters())

    def ours(k: int) -> None:
        phi = {name: p.detach() for name, p in meta_loss.named_parameters()}
        options = {"first_order": mode.startswith("first_order"), "low_memory": mode == "first_order_low_memory"}
        if mode.startswith("truncate_"):
            options["truncate"] = int(mode.split("_")[1])
        grads, _ = meta_gradient(learned, task_loss, theta, phi, (x, y), (xq, yq), lr, steps=k, **options)
        assert all(torch.isfinite(g).all() for g in grads.values())

    def with_higher(k: int) -> None:
        import higher

        inner = torch.optim.SGD(model.parameters(), lr=lr)
        with higher.innerloop_ctx(model, inner, copy_initial_weights=True) as (fmodel, diffopt):
            for _ in range(k):
                diffopt.step(meta_loss(fmodel(x), y).mean())
            ((fmodel(xq) - yq) ** 2).mean().backward(inputs=meta_params)

    def with_torchopt(k: int) -> None:
        import torchopt

        sgd = torchopt.sgd(lr)
        params = {name: p.detach().requires_grad_() for name, p in model.named_parameters()}
        state = sgd.init(params)
        for _ in range(k):
            loss = meta_loss(functional_call(model, params, (x,)), y).mean()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            updates, state = sgd.update(dict(zip(params, grads)), state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        ((functional_call(model, params, (xq,)) - yq) ** 2).mean().backward(inputs=meta_params)

    return {"higher": with_higher, "torchopt": with_torchopt}.get(mode, ours)


def worker(mode: str, k: int, points: int) -> dict[str, float]:
    """In this (fresh) process: the resident memory one K-step meta-gradient adds at its peak, in MB."""
    torch.set_num_threads(1)
    fn = _meta_gradient_fn(mode, points)
    fn(1)  # warm-up: imports, kernels, allocator arenas
    rss = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    fn(k)
    peak = _status_kb("VmHWM")
    return {"mode": mode, "k": k, "peak_added_mb": (peak - rss) / 1024, "rss_before_mb": rss / 1024}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in MODES:
        pts = sorted((r["k"], r["peak_added_mb"]) for r in rows if r["mode"] == mode)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=mode)
    ax.set_xlabel("unrolled inner steps K")
    ax.set_ylabel("peak memory added (MB, RSS)")
    ax.set_title("One meta-gradient on the sine optimizee (CPU)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 25, 50, 100], help="unroll lengths K")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--points", type=int, default=1000, help="points in the support and query batches")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--plot", help="write a PNG of memory against K")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if any(k < 1 for k in args.ks) or args.points < 1:
        parser.error("--ks and --points must be positive")
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.points)))
        return
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for mode in args.modes:
        for k in args.ks:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", mode, str(k),
                                   "--points", str(args.points)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{mode} K={k}: failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{mode:<12} K={k:<4} peak added {row['peak_added_mb']:8.1f} MB")
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump({"points": args.points, "method": "fresh process per row; VmHWM - VmRSS after clear_refs",
                       "rows": rows}, f, indent=1)
        os.replace(tmp, args.json)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
