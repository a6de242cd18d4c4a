"""Cost of one ML3 meta-iteration over one plain SGD step, beside `higher` and TorchOpt, in one process.

Measures single-threaded, on the sine optimizee (MLP 1-40-40-1, 100 points) and its meta-loss, all
on the same model, batch and meta-loss (METRICS.md, "Speed"):

* ``sgd``: one plain PyTorch SGD step (zero_grad, forward, MSE, backward, SGD.step), the baseline;
* ``default``: one ML3 meta-iteration as ``meta_train`` runs it by default (the compiled pure
  meta-step of :mod:`sb3_ml3.compiled`, then the Adam step on phi through ``apply_meta_gradient``);
* ``eager``: the same with the eager ``torch.func`` step (``compile=False``, ``--no-compile``);
* ``higher``: the same iteration with `higher` (the paper's tool), as its users write it;
* ``torchopt``: the same with TorchOpt's functional SGD and ``torch.func.functional_call``;
* the per-task cost of the eager meta-gradient with 1, 16 and 64 tasks under ``vmap``.

The methods are timed in interleaved rounds (each round times every method once, in a shuffled
order), so that load on the shared machine hits all of them alike; the ratios are per round, and
the table gives their median and the min over rounds. The one-off compile is measured in fresh
processes: with an empty inductor cache (cold) and with the cache the first one filled (warm).

Usage:  python benchmarks/bench_functional.py [--rounds 15] [--iters 100] [--json out.json] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from sb3_ml3.functional import apply_meta_gradient, batched_meta_gradient, make_meta_optimizer, parameters_of
from sb3_ml3.supervised.core import init_params, learned_loss_fn, meta_step_fn, stack_params, task_loss_fn
from sb3_ml3.supervised.sine import SineConfig, make_meta_loss, make_optimizee, sine_task


class Setup:
    """The sine optimizee, its meta-loss and one meta-train task, as ``ml3 sine`` builds them."""

    def __init__(self) -> None:
        self.config = SineConfig()
        generator = torch.Generator().manual_seed(0)
        self.model = make_optimizee(self.config.hidden_sizes)
        self.meta_loss = make_meta_loss(self.config, generator)
        task = sine_task(1.0, self.config.train_phase, self.config.n_points, self.config.input_range, generator)
        self.batch, self.query = (task.x_support, task.y_support), (task.x_query, task.y_query)
        self.learned = learned_loss_fn(self.model, self.meta_loss)
        self.task_loss = task_loss_fn(self.model)
        self.lr = self.config.inner_lr
        self.meta_opt = make_meta_optimizer(self.meta_loss.parameters(), self.config.meta_lr)  # as meta_train
        self.params = parameters_of(self.model)
        self.generator = generator

    def ml3_iteration(self, compile: bool) -> Callable[[], None]:
        """``meta_train``'s loop body: phi, the meta-step (compiled or eager), the checked Adam step on phi."""
        step = meta_step_fn(self.learned, self.task_loss, self.lr, 1, False, compile)

        def iteration() -> None:
            phi = {name: p.detach() for name, p in self.meta_loss.named_parameters()}
            grads, value, _ = step(self.params, phi, self.batch, self.query)
            apply_meta_gradient(self.meta_opt, self.meta_loss, grads, value.detach())

        iteration.step = step  # type: ignore[attr-defined]
        return iteration

    def sgd_step(self) -> Callable[[], None]:
        sgd = torch.optim.SGD(self.model.parameters(), lr=self.lr)
        x, y = self.batch

        def step() -> None:
            sgd.zero_grad()
            ((self.model(x) - y) ** 2).mean().backward()
            sgd.step()

        return step

    def higher_iteration(self) -> Callable[[], None]:
        import higher

        x, y = self.batch
        xq, yq = self.query

        def iteration() -> None:
            self.meta_opt.zero_grad()
            inner = torch.optim.SGD(self.model.parameters(), lr=self.lr)
            with higher.innerloop_ctx(self.model, inner, copy_initial_weights=True) as (fmodel, diffopt):
                diffopt.step(self.meta_loss(fmodel(x), y).mean())
                ((fmodel(xq) - yq) ** 2).mean().backward()
            self.meta_opt.step()

        return iteration

    def torchopt_iteration(self) -> Callable[[], None]:
        import torchopt
        from torch.func import functional_call

        x, y = self.batch
        xq, yq = self.query
        inner = torchopt.sgd(self.lr)
        names = [name for name, _ in self.model.named_parameters()]
        meta_params = list(self.meta_loss.parameters())

        def iteration() -> None:
            self.meta_opt.zero_grad()
            params = {name: p.detach().requires_grad_() for name, p in self.model.named_parameters()}
            loss = self.meta_loss(functional_call(self.model, params, (x,)), y).mean()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            updates, _ = inner.update(dict(zip(names, grads)), inner.init(params), inplace=False)
            updated = torchopt.apply_updates(params, updates, inplace=False)
            ((functional_call(self.model, updated, (xq,)) - yq) ** 2).mean().backward(inputs=meta_params)
            self.meta_opt.step()

        return iteration


def interleaved(methods: dict[str, Callable[[], None]], iters: dict[str, int], rounds: int,
                warmup: int = 10) -> dict[str, list[float]]:
    """Seconds per call of each method in each round; every round times all methods, in a shuffled order."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    order = list(methods)
    samples: dict[str, list[float]] = {name: [] for name in methods}
    shuffle = random.Random(0)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            fn, n = methods[name], iters[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return samples


_COMPILE_PROBE = """
import time, torch
torch.set_num_threads(1)
start = time.perf_counter()
import sys; sys.path.insert(0, {here!r})
from bench_functional import Setup
setup = Setup()
iteration = setup.ml3_iteration(compile=True)
ready = time.perf_counter()
iteration()
print(time.perf_counter() - ready, iteration.step.is_compiled)
"""


def compile_cost() -> dict[str, float]:
    """The first compiled iteration's seconds in a fresh process: empty inductor cache, then the cache it filled."""
    here = os.path.dirname(os.path.abspath(__file__))
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS="1")
        for label in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-c", _COMPILE_PROBE.format(here=here)], env=env,
                                  capture_output=True, text=True, check=True)
            seconds, compiled = done.stdout.split()[-2:]
            if compiled != "True":
                raise RuntimeError(f"the compile fell back to eager in the probe: {done.stderr[-2000:]}")
            out[f"compile_{label}_s"] = float(seconds)
    return out


def profile(setup: Setup, fn: Callable[[], None], label: str, rows: int = 12) -> None:
    """Where one iteration's time goes: ATen operator count and the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(5):
        fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            fn()
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::")) / 20
    self_total = sum(e.self_cpu_time_total for e in events) / 20
    print(f"\n== profile: {label}: {ops:.0f} aten ops per iteration, {self_total:.0f} us self CPU per iteration ==")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))


def per_task_vmap(setup: Setup, rounds: int, iters: int) -> dict[str, float]:
    """Per-task seconds of the eager meta-gradient with N tasks under ``vmap`` (``batched_meta_gradient``)."""
    out = {}
    phi = parameters_of(setup.meta_loss)
    for n in (1, 16, 64):
        tasks = [sine_task(1.0, float(w), setup.config.n_points, setup.config.input_range, setup.generator)
                 for w in torch.rand(n, generator=setup.generator)]
        xs, ys = torch.stack([t.x_support for t in tasks]), torch.stack([t.y_support for t in tasks])
        xq, yq = torch.stack([t.x_query for t in tasks]), torch.stack([t.y_query for t in tasks])
        thetas = stack_params([init_params(setup.model, setup.generator) for _ in range(n)])

        def vmapped(thetas=thetas, xs=xs, ys=ys, xq=xq, yq=yq) -> None:
            batched_meta_gradient(setup.learned, setup.task_loss, thetas, phi, (xs, ys), (xq, yq), setup.lr)

        samples = interleaved({"v": vmapped}, {"v": max(iters // (4 * n), 3)}, rounds, warmup=2)["v"]
        out[f"vmap_{n}_tasks_per_task_s"] = statistics.median(samples) / n
    return out


def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median and min seconds per method, and the median/min over rounds of its ratio to ``sgd``."""
    base = samples["sgd"]
    summary = {}
    for name, times in samples.items():
        ratios = [t / b for t, b in zip(times, base)]
        summary[name] = {"median_s": statistics.median(times), "min_s": min(times),
                         "ratio_median": statistics.median(ratios), "ratio_min": min(ratios)}
    for name in ("default", "eager"):
        for peer in ("higher", "torchopt"):
            if name in samples and peer in samples:
                ratios = [a / b for a, b in zip(samples[name], samples[peer])]
                summary[name][f"over_{peer}_median"] = statistics.median(ratios)
    return summary


def plot_ratios(summary: dict[str, dict[str, float]], path: str) -> None:
    """Bar chart of each method's time over the SGD step (median over rounds, the min as a tick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("sgd", "default", "torchopt", "higher", "eager") if n in summary]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    medians = [summary[n]["ratio_median"] for n in names]
    ax.barh(range(len(names)), medians, color=["grey", "tab:green", "tab:blue", "tab:orange", "tab:red"][:len(names)])
    ax.scatter([summary[n]["ratio_min"] for n in names], range(len(names)), color="black", marker="|", s=200,
               label="min over rounds")
    ax.axvline(3.0, color="tab:green", linestyle="--", label="goal: 3x")
    ax.set_yticks(range(len(names)), [LABELS[n] for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time over one plain SGD step (sine MLP, 1 thread)")
    for i, m in enumerate(medians):
        ax.text(m, i, f" {m:.2f}x", va="center", fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


LABELS = {
    "sgd": "plain SGD step (baseline)",
    "default": "ML3 meta-iteration, default (compiled torch.func)",
    "eager": "ML3 meta-iteration, eager torch.func (--no-compile)",
    "higher": "ML3 meta-iteration, higher 0.2.1",
    "torchopt": "ML3 meta-iteration, TorchOpt 0.7.3 + functional_call",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (each times every method)")
    parser.add_argument("--iters", type=int, default=100, help="calls per timed block of the fast methods")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled default path")
    parser.add_argument("--no-compile-cost", action="store_true", help="skip the fresh-process compile timings")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per method")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--plot", help="also write a PNG of the ratios to the SGD step")
    args = parser.parse_args()
    if args.rounds < 1 or args.iters < 1:
        parser.error("--rounds and --iters must be positive")
    torch.set_num_threads(1)
    setup = Setup()
    methods = {"sgd": setup.sgd_step(), "eager": setup.ml3_iteration(compile=False)}
    if not args.no_compile:
        methods["default"] = setup.ml3_iteration(compile=True)
        methods["default"]()  # the in-process compile (or cache load), before timing
        if not methods["default"].step.is_compiled:
            print(f"note: compile failed, the default path ran eagerly: {methods['default'].step.fallback_reason}")
    for peer in ("higher", "torchopt"):
        try:
            methods[peer] = getattr(setup, f"{peer}_iteration")()
        except ImportError:
            print(f"note: {peer} is not installed; left out")
    slow = {"eager", "higher", "torchopt"}
    iters = {name: max(args.iters // 4, 5) if name in slow else args.iters for name in methods}
    if args.profile:
        for name, fn in methods.items():
            profile(setup, fn, LABELS[name])
    samples = interleaved(methods, iters, args.rounds)
    summary = summarise(samples)
    results: dict = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "cpus": os.cpu_count(),
                     "load_average": os.getloadavg(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "rounds": args.rounds, "iters": iters, "summary": summary, "samples_s": samples}
    results.update(per_task_vmap(setup, max(args.rounds // 3, 3), args.iters))
    if not args.no_compile and not args.no_compile_cost:
        results.update(compile_cost())

    print(f"machine: {results['machine']}, {results['cpus']} CPUs, load {results['load_average']}, "
          f"torch {torch.__version__}, 1 thread, {args.rounds} interleaved rounds")
    print(f"{'measurement':<54}{'median':>10}{'min':>10}{'ratio med':>11}{'ratio min':>11}")
    for name in methods:
        s = summary[name]
        print(f"{LABELS[name]:<54}{s['median_s'] * 1e6:>8.0f}us{s['min_s'] * 1e6:>8.0f}us"
              f"{s['ratio_median']:>11.2f}{s['ratio_min']:>11.2f}")
    for name in ("default", "eager"):
        for peer in ("higher", "torchopt"):
            if f"over_{peer}_median" in summary.get(name, {}):
                print(f"{name} over {peer}: {summary[name][f'over_{peer}_median']:.3f} (median over rounds)")
    one = results["vmap_1_tasks_per_task_s"]
    for n in (1, 16, 64):
        t = results[f"vmap_{n}_tasks_per_task_s"]
        print(f"eager meta-gradient per task, {n:>2} tasks vmapped: {t * 1e6:8.0f}us  {t / one:.3f} of 1 task")
    if "compile_cold_s" in results:
        print(f"one-off compile (first iteration, fresh process): {results['compile_cold_s']:.1f} s with an empty "
              f"inductor cache, {results['compile_warm_s']:.1f} s from the cache")
    if args.plot:
        plot_ratios(summary, args.plot)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
