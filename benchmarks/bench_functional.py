"""Cost of one ML3 meta-iteration over one plain SGD step, and of vmapping tasks together.

Measures, in one process and single-threaded (see METRICS.md, "Speed"):

1. one plain PyTorch SGD step on the sine optimizee (zero_grad, forward, MSE, backward, SGD.step);
2. one ML3 meta-iteration on the same optimizee and batch (inner step on the learned loss, task
   loss of the updated optimizee, meta-gradient, Adam step on phi): eager torch.func, and
   torch.compile-d;
3. the same meta-iteration with `higher` (the paper's tool), for reference;
4. the per-task cost of the meta-gradient when 1, 16 and 64 tasks are vmapped together.

Usage:  python benchmarks/bench_functional.py [--repeats 7] [--iters 200] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from sb3_ml3.functional import (apply_meta_gradient, batched_meta_gradient, make_meta_optimizer, meta_gradient,
                                parameters_of)
from sb3_ml3.supervised.core import init_params, learned_loss_fn, stack_params, task_loss_fn
from sb3_ml3.supervised.sine import SineConfig, make_meta_loss, make_optimizee, sine_task


def timeit(fn, iters: int, repeats: int, warmup: int = 20) -> float:
    """Median seconds per call over ``repeats`` blocks of ``iters`` calls, after warm-up."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        samples.append((time.perf_counter() - start) / iters)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement (~40 s compile)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = SineConfig()
    generator = torch.Generator().manual_seed(0)
    model = make_optimizee(config.hidden_sizes)
    meta_loss = make_meta_loss(config, generator)
    task = sine_task(1.0, config.train_phase, config.n_points, config.input_range, generator)
    batch, query = (task.x_support, task.y_support), (task.x_query, task.y_query)
    learned, task_loss = learned_loss_fn(model, meta_loss), task_loss_fn(model)
    lr = config.inner_lr
    results: dict[str, float] = {}

    # 1. the plain PyTorch SGD step
    sgd = torch.optim.SGD(model.parameters(), lr=lr)

    def sgd_step() -> None:
        sgd.zero_grad()
        loss = ((model(batch[0]) - batch[1]) ** 2).mean()
        loss.backward()
        sgd.step()

    results["sgd_step_s"] = timeit(sgd_step, args.iters, args.repeats)

    # 2. one ML3 meta-iteration (Alg. 1 body), eager and compiled
    meta_opt = make_meta_optimizer(meta_loss.parameters(), config.meta_lr)  # what meta_train() uses
    params = parameters_of(model)

    def make_iteration(step_fn):
        def iteration() -> None:
            phi = {k: p.detach() for k, p in meta_loss.named_parameters()}
            grads, value = step_fn(params, phi, batch, query)
            apply_meta_gradient(meta_opt, meta_loss, grads, value)

        return iteration

    def eager_step(theta, phi, b, q):
        return meta_gradient(learned, task_loss, theta, phi, b, q, lr)

    results["meta_iteration_eager_s"] = timeit(make_iteration(eager_step), args.iters // 4, args.repeats)
    if not args.no_compile:
        compiled = torch.compile(eager_step, dynamic=False)
        start = time.perf_counter()
        make_iteration(compiled)()
        results["compile_time_s"] = time.perf_counter() - start
        results["meta_iteration_compiled_s"] = timeit(make_iteration(compiled), args.iters, args.repeats)

    # 3. the same with higher
    try:
        import higher

        def higher_iteration() -> None:
            meta_opt.zero_grad()
            inner = torch.optim.SGD(model.parameters(), lr=lr)
            with higher.innerloop_ctx(model, inner, copy_initial_weights=True) as (fmodel, diffopt):
                diffopt.step(meta_loss(fmodel(batch[0]), batch[1]).mean())
                ((fmodel(query[0]) - query[1]) ** 2).mean().backward()
            meta_opt.step()

        results["meta_iteration_higher_s"] = timeit(higher_iteration, args.iters // 4, args.repeats)
    except ImportError:
        pass

    # 4. vmap over tasks: per-task cost of the meta-gradient
    for n in (1, 16, 64):
        tasks = [sine_task(1.0, float(w), config.n_points, config.input_range, generator) for w in torch.rand(n)]
        xs, ys = torch.stack([t.x_support for t in tasks]), torch.stack([t.y_support for t in tasks])
        xq, yq = torch.stack([t.x_query for t in tasks]), torch.stack([t.y_query for t in tasks])
        thetas = stack_params([init_params(model, generator) for _ in range(n)])
        phi = parameters_of(meta_loss)

        def vmapped() -> None:
            batched_meta_gradient(learned, task_loss, thetas, phi, (xs, ys), (xq, yq), lr)

        results[f"vmap_{n}_tasks_per_task_s"] = timeit(vmapped, max(args.iters // (4 * n), 5), args.repeats) / n

    sgd_s = results["sgd_step_s"]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread, torch {torch.__version__}")
    print(f"{'measurement':<48}{'time':>12}{'ratio':>10}")
    print(f"{'plain SGD step (baseline)':<48}{sgd_s * 1e6:>10.0f}us{1.0:>10.2f}")
    for key, label in [("meta_iteration_eager_s", "ML3 meta-iteration, torch.func eager"),
                       ("meta_iteration_compiled_s", "ML3 meta-iteration, torch.func + torch.compile"),
                       ("meta_iteration_higher_s", "ML3 meta-iteration, higher (paper's tool)")]:
        if key in results:
            print(f"{label:<48}{results[key] * 1e6:>10.0f}us{results[key] / sgd_s:>10.2f}")
    one = results["vmap_1_tasks_per_task_s"]
    for n in (1, 16, 64):
        t = results[f"vmap_{n}_tasks_per_task_s"]
        print(f"{f'meta-gradient per task, {n} tasks vmapped':<48}{t * 1e6:>10.0f}us{t / one:>10.3f}  (vs 1 task)")
    if "compile_time_s" in results:
        print(f"(one-off torch.compile time: {results['compile_time_s']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
