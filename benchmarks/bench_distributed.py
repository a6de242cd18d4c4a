"""Throughput of distributed meta-training: 2 Ray workers over 1, beside the same shards in one process.

The problem is ``ml3 sine --workers N --tasks-per-step B``: B optimizees of the paper's sine MLP
(1-40-40-1, 100 points) per outer step, meta-loss 2-40-40-1 (softplus), one inner SGD step, eager
``torch.func`` on every side. Each configuration keeps its workers for the whole benchmark:

* ``in_process``: ``--workers 0``, all B tasks in this process (no Ray);
* ``ray_1``: one Ray worker holding all B tasks (what Ray adds to the single process);
* ``ray_2``: two Ray workers with B/2 tasks each.

Timing follows METRICS.md ("Speed"): a warm-up, then interleaved rounds (each round runs every
configuration for ``--steps`` outer steps, in a shuffled order, so that load on a shared machine hits
all alike); throughput is outer steps per second (x B tasks), ratios are per round, and the table gives
their median and min. Also measured: ``ray.init`` in a fresh process, the actors' start-up, the bytes
sent to and from the workers per outer step (pickled phi and replies) and the per-step overhead
(driver wall time minus the slowest worker's compute time: transfers, scheduling, averaging, Adam), and,
before and after, what two plain processes get over one on the machine at that moment (the ceiling).

Usage:  python benchmarks/bench_distributed.py --out DIR [--tasks 4 16 64] [--rounds 5] [--steps 15] [--force]
(about 3 minutes on a quiet 2-core machine; prints the headline ratio).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time

import torch

from sb3_ml3.distributed.ray_backend import RaySession
from sb3_ml3.distributed.sine import sine_problem
from sb3_ml3.distributed.trainer import DistributedMetaTrainer, StepTimes
from sb3_ml3.experiments.store import atomic_write_json, prepare_out_dir
from sb3_ml3.supervised.sine import SineConfig, make_meta_loss, sine_task

CONFIGS = {"in_process": 0, "ray_1": 1, "ray_2": 2}
HEADLINE_TASKS = 16  # chosen before measuring: a meta-batch as MAML-style meta-training uses


def ray_init_seconds() -> float:
    """``ray.init(num_cpus=2)`` in a fresh Python process (what a user's first distributed run pays)."""
    code = ("import time, logging, ray; t = time.perf_counter(); "
            "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING); "
            "print(time.perf_counter() - t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _busy_loop(n: int) -> float:
    torch.set_num_threads(1)
    a = torch.randn(200, 200, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(n):
        a = torch.tanh(a @ a * 0.01)
    return time.perf_counter() - start


def machine_parallelism(n: int = 1500) -> float:
    """What two processes get over one right now: the ceiling of any 2-worker speed-up on this machine.

    The same single-threaded torch loop, once alone and then in two processes at once: 2.0 on two idle
    cores, less where other jobs share them.
    """
    import multiprocessing

    alone = _busy_loop(n)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_busy_loop, [10, 10])  # start-up outside the timing
        start = time.perf_counter()
        pool.map(_busy_loop, [n, n])
        both = time.perf_counter() - start
    return 2 * alone / both


def make_trainer(tasks: int, workers: int) -> DistributedMetaTrainer:
    config = SineConfig()
    generator = torch.Generator().manual_seed(0)
    meta_loss = make_meta_loss(config, generator)
    task = sine_task(config.train_amplitude, config.train_phase, config.n_points, config.input_range, generator)
    spec = sine_problem(config, 0, tasks, task.support, task.query)
    return DistributedMetaTrainer(meta_loss, spec, config.meta_lr, workers=workers)


def bench_tasks(tasks: int, rounds: int, steps: int, warmup: int) -> dict:
    """Interleaved rounds of the three configurations at ``tasks`` optimizees per outer step."""
    started = time.perf_counter()
    trainers = {name: make_trainer(tasks, workers) for name, workers in CONFIGS.items()}
    start_s = {name: round(getattr(t.backend, "actors_s", 0.0), 3) for name, t in trainers.items()}
    try:
        for trainer in trainers.values():
            trainer.fit(warmup)
        per_round: dict[str, list[float]] = {name: [] for name in trainers}
        times: dict[str, StepTimes] = {name: StepTimes() for name in trainers}
        for _ in range(rounds):
            order = list(trainers)
            random.shuffle(order)
            for name in order:
                trainer = trainers[name]
                trainer.times = StepTimes()
                trainer.fit(steps)
                per_round[name].append(steps / sum(trainer.times.wall_s))  # outer steps per second
                for field in ("wall_s", "slowest_compute_s", "total_compute_s"):
                    getattr(times[name], field).extend(getattr(trainer.times, field))
        traffic = {name: t.backend.traffic() for name, t in trainers.items()}
    finally:
        for trainer in trainers.values():
            trainer.close()
    ratio_2_1 = [a / b for a, b in zip(per_round["ray_2"], per_round["ray_1"])]
    ratio_2_local = [a / b for a, b in zip(per_round["ray_2"], per_round["in_process"])]
    return {
        "tasks_per_step": tasks,
        "steps_per_s": {name: statistics.median(v) for name, v in per_round.items()},
        "steps_per_s_per_round": per_round,
        "ratio_ray2_over_ray1": {"median": statistics.median(ratio_2_1), "min": min(ratio_2_1), "per_round": ratio_2_1},
        "ratio_ray2_over_in_process": {"median": statistics.median(ratio_2_local), "min": min(ratio_2_local),
                                       "per_round": ratio_2_local},
        "step_times": {name: t.summary() for name, t in times.items()},
        "traffic_bytes_per_step": traffic,
        "actors_start_s": start_s,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def plot(results: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = results["by_tasks"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.27
    for j, name in enumerate(CONFIGS):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        ax1.bar(xs, [r["steps_per_s"][name] * r["tasks_per_step"] for r in rows], width, label=name)
    ax1.set_xticks(range(len(rows)), [str(r["tasks_per_step"]) for r in rows])
    ax1.set_xlabel("optimizees per outer step (B)")
    ax1.set_ylabel("meta-gradients per second (tasks/s)")
    ax1.set_title("throughput (median of rounds)")
    ax1.legend()
    ax2.plot([r["tasks_per_step"] for r in rows], [r["ratio_ray2_over_ray1"]["median"] for r in rows], "o-",
             label="2 Ray workers / 1")
    ax2.plot([r["tasks_per_step"] for r in rows], [r["ratio_ray2_over_in_process"]["median"] for r in rows], "s--",
             label="2 Ray workers / in process")
    ax2.axhline(1.7, color="grey", lw=0.8, ls=":", label="goal 1.7x")
    ax2.axhline(2.0, color="black", lw=0.8, label="ideal 2x")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("optimizees per outer step (B)")
    ax2.set_ylabel("speed-up")
    ax2.set_title("2-core CPU, shared")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "distributed_throughput.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.json and the figure")
    parser.add_argument("--tasks", type=int, nargs="+", default=[4, HEADLINE_TASKS, 64], help="values of B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15, help="outer steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="replace the results already in --out")
    args = parser.parse_args(argv)
    if min(args.tasks) < 2 or args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("need --tasks >= 2 (two workers), --rounds >= 1, --steps >= 1, --warmup >= 0")
    prepare_out_dir(args.out, force=args.force)
    torch.set_num_threads(1)
    started = time.perf_counter()
    init_s = ray_init_seconds()
    parallelism = [machine_parallelism()]
    with RaySession(3) as session:  # 3 logical CPUs: the 1- and 2-worker configurations' actors coexist (idle ones wait)
        rows = [bench_tasks(b, args.rounds, args.steps, args.warmup) for b in args.tasks]
    parallelism.append(machine_parallelism())
    head = next((r for r in rows if r["tasks_per_step"] == HEADLINE_TASKS), rows[-1])
    results = {
        "benchmark": "distributed meta-training throughput (sine, eager torch.func)",
        "command": "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "torch": torch.__version__, "ray": __import__("ray").__version__,
        "machine_two_process_speedup": {"before": round(parallelism[0], 3), "after": round(parallelism[1], 3)},
        "ray_init_fresh_process_s": round(init_s, 2), "ray_init_in_benchmark_s": round(session.init_s, 2),
        "headline": {"tasks_per_step": head["tasks_per_step"], "ratio_ray2_over_ray1": head["ratio_ray2_over_ray1"],
                     "ratio_ray2_over_in_process": head["ratio_ray2_over_in_process"], "goal": 1.7},
        "by_tasks": rows,
        "wall_s": None,
    }
    results["figures"] = plot(results, args.out)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    atomic_write_json(os.path.join(args.out, "results.json"), results)
    print(f"ray.init (fresh process): {init_s:.1f} s; two plain processes over one on this machine now: "
          f"{parallelism[0]:.2f}x before, {parallelism[1]:.2f}x after (the ceiling of any 2-worker speed-up)")
    for r in rows:
        t = r["traffic_bytes_per_step"]["ray_2"]
        o = r["step_times"]
        print(f"B={r['tasks_per_step']:3d}: steps/s in-process {r['steps_per_s']['in_process']:.2f}  "
              f"1 worker {r['steps_per_s']['ray_1']:.2f}  2 workers {r['steps_per_s']['ray_2']:.2f}  "
              f"2/1 = {r['ratio_ray2_over_ray1']['median']:.2f}x (min {r['ratio_ray2_over_ray1']['min']:.2f})  "
              f"2/in-process = {r['ratio_ray2_over_in_process']['median']:.2f}x  "
              f"overhead/step 1w {o['ray_1']['median_overhead_s'] * 1e3:.1f} ms 2w {o['ray_2']['median_overhead_s'] * 1e3:.1f} ms  "
              f"bytes/step out {t['bytes_to_workers']} back {t['bytes_from_workers']}")
    h = results["headline"]
    print(f"headline (B={h['tasks_per_step']}): 2 Ray workers over 1 = {h['ratio_ray2_over_ray1']['median']:.2f}x "
          f"(goal >= 1.7x: {'met' if h['ratio_ray2_over_ray1']['median'] >= 1.7 else 'not met'}); "
          f"wrote {args.out}/results.json in {results['wall_s']} s")
    return results


if __name__ == "__main__":
    main()
