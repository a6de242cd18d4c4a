"""ML3 against PPO on a goal env: env steps/s at meta-test and at meta-train, in one process.

Single-threaded, interleaved, the env's PPO recipe (``VecNormalize``, n_envs, n_steps, batch_size, n_epochs,
learning rate; ``sb3_ml3/experiments/recipes``) for every run:

* ``ppo``: SB3's PPO;
* ``ml3_meta_test``: ``ML3("MlpPolicy", env)`` with the env's zoo loss (the one-liner's default) and its update;
* ``ml3_meta_train``: meta-training a loss in PPO's family (``surrogate="ppo"``, penalty correction, Adam inner
  step equal to PPO's joint update), the setting of the shipped ReacherGoal loss, first-order through all
  minibatch steps with the traced outer step (:mod:`sb3_ml3.traced`, the default);
* ``ml3_meta_train_recompute``: the same with ``traced_outer_step = False`` (the outer step recomputes the
  inner update, as before the trace existed);
* with ``--default-loss`` also ``ml3_meta_train_default``: a new default meta-loss (quadratic form, SGD inner
  step, actor-only clip) under the same rollout and minibatch settings;
* with ``--compiled`` also ``ml3_meta_test_compiled`` and ``ml3_meta_train_compiled``: the same runs with
  ``compile_inner_step=True``; the one-off compile is paid in the warm-up and reported as ``compile_s`` (the
  compiled warm-up's time over the eager one's).

Each figure is the median of ``--repeats`` interleaved runs of ``learn(--timesteps)`` after a warm-up run; a
meta-train run's first rollout has no outer step, so longer runs weigh it less.

Runs of 200k+ steps take ML3's default ``compile_inner_step="auto"`` path, which compiles inside the timed run
(the warm-up is too short to): ``--timesteps 409600 --repeats 1 --only ml3_meta_test ml3_meta_train`` measures
that default end to end, one-off compile included (with a fresh ``TORCHINDUCTOR_CACHE_DIR`` for a cold one).

Usage:  python benchmarks/bench_ml3.py [--env ReacherGoal-v0] [--timesteps 16384] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import sb3_ml3  # noqa: F401  (registers the goal envs)
from sb3_ml3 import ML3
from sb3_ml3.experiments import atomic_write_json, load_recipe, ppo_family_meta_train

def steps_per_second(make_model, timesteps: int) -> float:
    model = make_model()
    start = time.perf_counter()
    model.learn(timesteps)
    return model.num_timesteps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ReacherGoal-v0")
    parser.add_argument("--timesteps", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--default-loss", action="store_true", help="also time meta-training a default meta-loss")
    parser.add_argument("--compiled", action="store_true", help="also time ML3 with compile_inner_step=True")
    parser.add_argument("--only", nargs="+", default=None, metavar="RUN",
                        help="time only these runs (ppo is always timed): e.g. --only ml3_meta_test ml3_meta_train")
    parser.add_argument("--json", help="also write the figures to this JSON file (atomically)")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = parser.parse_args()
    if args.timesteps < 1 or args.repeats < 1:
        raise SystemExit("--timesteps and --repeats must be positive")
    if args.json and os.path.exists(args.json) and not args.force:
        raise SystemExit(f"{args.json} exists: pass --force to replace it.")
    torch.set_num_threads(1)
    ppo = load_recipe(args.env)["ppo"]
    rollout = dict(n_steps=ppo["n_steps"], batch_size=ppo["batch_size"], n_epochs=ppo["n_epochs"], seed=0,
                   device="cpu")

    def env(split: str = "test") -> VecNormalize:
        return VecNormalize(make_vec_env(args.env, n_envs=ppo["n_envs"], seed=0, env_kwargs={"task_split": split}))

    family = dict(ppo_family_meta_train(args.env)[0], meta_train=True, seed=0, device="cpu")

    def meta_train(traced: bool, compiled: bool = False) -> ML3:
        model = ML3("MlpPolicy", env("train"), compile_inner_step=compiled, **family)
        model.traced_outer_step = traced
        return model

    makers = {
        "ppo": lambda: PPO("MlpPolicy", env(), learning_rate=ppo["learning_rate"], **rollout),
        "ml3_meta_test": lambda: ML3("MlpPolicy", env(), seed=0, device="cpu"),
        "ml3_meta_train": lambda: meta_train(True),
        "ml3_meta_train_recompute": lambda: meta_train(False),
    }
    if args.default_loss:
        makers["ml3_meta_train_default"] = lambda: ML3("MlpPolicy", env("train"), meta_train=True, **rollout)
    if args.compiled:
        makers["ml3_meta_test_compiled"] = lambda: ML3("MlpPolicy", env(), seed=0, device="cpu",
                                                       compile_inner_step=True)
        makers["ml3_meta_train_compiled"] = lambda: meta_train(True, compiled=True)
    if args.only is not None:
        unknown = sorted(set(args.only) - set(makers))
        if unknown:
            raise SystemExit(f"--only: unknown runs {unknown}; choose from {sorted(makers)} (with their flags).")
        makers = {name: make for name, make in makers.items() if name == "ppo" or name in args.only}
    iteration_steps = ppo["n_envs"] * ppo["n_steps"]
    warm_up_s = {}
    for name, make in makers.items():  # warm-up (imports, first allocations, the one-off compile)
        start = time.perf_counter()
        steps_per_second(make, 2 * iteration_steps)
        warm_up_s[name] = time.perf_counter() - start
    samples: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(args.repeats):
        for name, make in makers.items():
            samples[name].append(steps_per_second(make, args.timesteps))
    rate = {name: statistics.median(values) for name, values in samples.items()}
    over_ppo = {name: rate[name] / rate["ppo"] for name in makers}
    results = {"env_steps_per_s": rate, "samples": samples, "over_ppo": over_ppo,
               "traced_over_recompute": (rate["ml3_meta_train"] / rate["ml3_meta_train_recompute"]
                                         if {"ml3_meta_train", "ml3_meta_train_recompute"} <= set(rate) else None),
               "warm_up_s": warm_up_s,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
               "settings": vars(args), "recipe": dict(ppo)}
    print(f"{args.env}: PPO recipe {ppo['n_envs']} envs x {ppo['n_steps']} steps, batch {ppo['batch_size']}, "
          f"{ppo['n_epochs']} epochs; {args.timesteps} steps x {args.repeats} repeats; {results['machine']}")
    print(f"{'run':<26}{'env steps/s':>12}{'s / iteration':>15}{'over PPO':>10}")
    for name in makers:
        print(f"{name:<26}{rate[name]:>12.0f}{iteration_steps / rate[name]:>15.3f}{over_ppo[name]:>9.2f}x")
    if results["traced_over_recompute"] is not None:
        print(f"traced outer step over recomputing: {results['traced_over_recompute']:.2f}x env steps/s")
    if {"ml3_meta_test", "ml3_meta_train", "ml3_meta_test_compiled", "ml3_meta_train_compiled"} <= set(makers):
        results["compile_s"] = {
            "meta_test": warm_up_s["ml3_meta_test_compiled"] - warm_up_s["ml3_meta_test"],
            "meta_train": warm_up_s["ml3_meta_train_compiled"] - warm_up_s["ml3_meta_train"]}
        print(f"one-off compile (compiled warm-up over the eager one): {results['compile_s']['meta_test']:.1f} s at "
              f"meta-test, {results['compile_s']['meta_train']:.1f} s at meta-train (its second graph)")
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
