"""Step cost of the goal envs over the Gymnasium envs they wrap (goal: at most 1.1x).

    python benchmarks/bench_envs.py [--repeats 15] [--steps 1000] [--json out.json]

ReacherGoal-v0 is compared with Reacher-v5 and AntGoal-v0 with Ant-v5, in one process: each env
is warmed up, then timed over ``--steps`` steps of pre-drawn random actions (resetting when an
episode ends, so resets count for both), repeats interleaved between the two envs; the medians
of the repeats are reported, and the ratio is the median of the per-repeat ratios.  Two
settings: the bare env (``env.unwrapped``: the cost our subclass adds) and the env as
``gym.make`` returns it (with Gymnasium's TimeLimit / order-enforcing / checker wrappers).  PointmassGoal-v0 and MountainCarGoal-v0 (pure numpy) are timed for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import gymnasium as gym
import numpy as np

import sb3_ml3  # noqa: F401  (registers the envs)

PAIRS = [("ReacherGoal-v0", "Reacher-v5"), ("AntGoal-v0", "Ant-v5")]
SOLO = ["PointmassGoal-v0", "MountainCarGoal-v0"]


def make(env_id: str, bare: bool):
    env = gym.make(env_id)
    return env.unwrapped if bare else env


def time_steps(env, actions: np.ndarray, seed: int) -> float:
    """Seconds per step over ``actions`` (reset when an episode ends)."""
    env.reset(seed=seed)
    step, reset = env.step, env.reset
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = step(a)
        if term or trunc:
            reset()
    return (time.perf_counter() - t0) / len(actions)


def bench(env_ids: list[str], bare: bool, steps: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each env in every repeat, repeats interleaved across the envs."""
    envs = {i: make(i, bare) for i in env_ids}
    rng = np.random.default_rng(0)
    actions = {
        i: rng.uniform(e.action_space.low, e.action_space.high, size=(steps, *e.action_space.shape)).astype(
            np.float32
        )
        for i, e in envs.items()
    }
    for i, e in envs.items():
        time_steps(e, actions[i][:warmup], seed=0)
    times: dict[str, list[float]] = {i: [] for i in env_ids}
    for r in range(repeats):
        order = env_ids if r % 2 == 0 else env_ids[::-1]
        for i in order:
            times[i].append(time_steps(envs[i], actions[i], seed=r))
    for e in envs.values():
        e.close()
    return times


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import mujoco

    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, gymnasium {gym.__version__}, "
        f"mujoco {mujoco.__version__}, numpy {np.__version__}"
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    rows = []
    for bare in (True, False):
        setting = "bare (env.unwrapped)" if bare else "gym.make (wrapped)"
        for ours, base in PAIRS:
            t = bench([ours, base], bare, args.steps, args.repeats, args.warmup)
            # ratio: median over repeats of the paired ratio (robust to load drifting between repeats)
            ratio = statistics.median(a / b for a, b in zip(t[ours], t[base]))
            rows.append({"setting": setting, "env": ours, "baseline": base,
                         "us_per_step": statistics.median(t[ours]) * 1e6,
                         "baseline_us_per_step": statistics.median(t[base]) * 1e6, "ratio": ratio})
        t = bench(SOLO, bare, args.steps, args.repeats, args.warmup)
        for i in SOLO:
            rows.append({"setting": setting, "env": i, "baseline": None,
                         "us_per_step": statistics.median(t[i]) * 1e6, "baseline_us_per_step": None, "ratio": None})

    cmd = "python " + " ".join([os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv))
    print(f"$ {cmd}")
    print(f"machine: {machine()}")
    print(f"median of {args.repeats} interleaved repeats x {args.steps} steps, {args.warmup} warm-up steps, "
          "random actions;")
    print("ratio = median of the per-repeat ratios (ours / baseline)\n")
    print("| setting | env | us/step | baseline | baseline us/step | ratio |")
    print("|---|---|---:|---|---:|---:|")
    for r in rows:
        base = r["baseline"] or "-"
        bus = f"{r['baseline_us_per_step']:.1f}" if r["baseline_us_per_step"] else "-"
        ratio = f"{r['ratio']:.3f}x" if r["ratio"] else "-"
        print(f"| {r['setting']} | {r['env']} | {r['us_per_step']:.1f} | {base} | {bus} | {ratio} |")
    result = {"command": cmd, "machine": machine(), "steps": args.steps, "repeats": args.repeats, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
