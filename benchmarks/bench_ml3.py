"""ML3 against PPO on ReacherGoal-v0: env-steps/s at meta-test, and meta-training's cost per iteration.

In one process, single-threaded, the same env, n_envs, n_steps, batch_size and n_epochs:

* meta-test: ``ML3(meta_loss=<frozen>)`` vs ``PPO`` -- env steps per second of ``learn()``
  (rollouts + updates); the goal is a ratio of at least 1.0;
* meta-train: ``ML3(meta_train=True)`` vs ``PPO`` -- seconds per iteration (one rollout + update).

Each measurement is the median of ``--repeats`` interleaved runs after a warm-up run.

Usage:  python benchmarks/bench_ml3.py [--timesteps 8192] [--repeats 3] [--n-epochs 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_ml3 import ML3
from sb3_ml3.ml3 import DEFAULT_META_INPUTS


def steps_per_second(make_model, timesteps: int) -> float:
    model = make_model()
    start = time.perf_counter()
    model.learn(timesteps)
    return model.num_timesteps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ReacherGoal-v0")
    parser.add_argument("--timesteps", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-epochs", type=int, default=10)
    parser.add_argument("--advantage-input", action="store_true",
                        help="meta-loss also reads the advantage (the tuned recipe): meta-test then trains the critic too")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def env():
        return make_vec_env(args.env, n_envs=args.n_envs, seed=0, env_kwargs={"task_split": "test"})

    shared = dict(n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs, seed=0, device="cpu")
    inputs = {"meta_inputs": DEFAULT_META_INPUTS + ("advantage",)} if args.advantage_input else {}
    with tempfile.TemporaryDirectory() as tmp:
        loss_path = f"{tmp}/loss.zip"
        # a new (meta_train=True) loss, not the zoo's, which expects VecNormalize
        ML3("MlpPolicy", env(), meta_train=True, **shared, **inputs).save_meta_loss(loss_path)
        makers = {
            "ppo": lambda: PPO("MlpPolicy", env(), **shared),
            "ml3_meta_test": lambda: ML3("MlpPolicy", env(), meta_loss=loss_path, **shared, **inputs),
            "ml3_meta_train": lambda: ML3("MlpPolicy", env(), meta_train=True, **shared, **inputs),
        }
        for make in makers.values():  # warm-up
            steps_per_second(make, args.n_envs * args.n_steps)
        samples: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(args.repeats):
            for name, make in makers.items():
                samples[name].append(steps_per_second(make, args.timesteps))
    rate = {name: statistics.median(values) for name, values in samples.items()}
    iteration_steps = args.n_envs * args.n_steps
    results = {
        "env_steps_per_s": rate,
        "meta_test_over_ppo_steps_per_s": rate["ml3_meta_test"] / rate["ppo"],
        "meta_train_iteration_s": iteration_steps / rate["ml3_meta_train"],
        "ppo_iteration_s": iteration_steps / rate["ppo"],
        "meta_train_over_ppo_cost_per_iteration": rate["ppo"] / rate["ml3_meta_train"],
        "settings": vars(args),
    }
    print(f"{args.env}: n_envs={args.n_envs} n_steps={args.n_steps} batch_size={args.batch_size} "
          f"n_epochs={args.n_epochs}, advantage input: {args.advantage_input}, "
          f"{args.timesteps} steps x {args.repeats} repeats, 1 thread, "
          f"{platform.machine()}, torch {torch.__version__}")
    print(f"{'run':<18}{'env steps/s':>14}{'s / iteration':>16}")
    for name in makers:
        print(f"{name:<18}{rate[name]:>14.0f}{iteration_steps / rate[name]:>16.3f}")
    print(f"meta-test env-steps/s over PPO's: {results['meta_test_over_ppo_steps_per_s']:.2f}x")
    print(f"meta-train cost per iteration over PPO's: {results['meta_train_over_ppo_cost_per_iteration']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
