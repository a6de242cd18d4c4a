"""Tune the PPO and TRPO baselines as their users run them, and measure the budget at which each is flat.

    python benchmarks/baseline_sweep.py --env ReacherGoal-v0 --out docs/results/baselines
    python benchmarks/baseline_sweep.py --env PointmassGoal-v0 --out /tmp/sweep --configs ppo_D --timesteps 4000

Why: an "N x fewer samples to 80% of PPO" claim means nothing unless PPO is configured the way its
users configure it (rl-zoo3's ``normalize: true``: ``VecNormalize`` of observations *and* rewards),
tuned by a stated sweep, and trained until its curve is flat (``/work/shared/METRICS.md``). This
script runs that sweep: one (algo, config, env, seed) at a time, 8 envs, goals of the *train* split
only (tuning never sees the held-out goals), evaluated on 10 fixed train-split validation goals at
step 0 and every ``--eval-every`` env steps with the library's deterministic evaluation.

Per config it writes ``<out>/<env_id>/<algo>_<config>_seed<seed>.json`` (settings, curve, wall time,
env steps/s); a config whose file exists is skipped, so a stopped sweep resumes. After the configs of
an env it writes ``<out>/<env_id>/summary.md`` from every result file in that folder: final metric
(mean of the last 3 evaluations), best, the plateau test of METRICS.md and the plateau budget.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import stable_baselines3
import torch
from sb3_contrib import TRPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import sb3_ml3  # noqa: F401  (registers the goal envs)
from sb3_ml3.envs import sample_tasks
from sb3_ml3.evaluation import evaluate_task_metric

N_ENVS = 8
POLICY_KWARGS: dict[str, Any] = dict(net_arch=dict(pi=[64, 64], vf=[64, 64]))
VALIDATION_GOALS, VALIDATION_SEED, EVAL_SEED = 10, 2000, 54321  # train-split goals; never the held-out ones
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "trpo": TRPO}
SMALL_ENVS = ("ReacherGoal-v0", "PointmassGoal-v0")

# name -> algo, the envs whose default sweep includes it, its hyperparameters, and why it is in the sweep.
CONFIGS: dict[str, dict[str, Any]] = {
    "ppo_D": dict(algo="ppo", envs=SMALL_ENVS, reason="the setting sb3-ml3 ships for these envs",
                  kwargs=dict(n_steps=64, batch_size=128, n_epochs=10, learning_rate=1e-3, gamma=0.95,
                              gae_lambda=0.95)),
    "ppo_D_lr3e-4": dict(algo="ppo", envs=SMALL_ENVS, reason="the shipped setting with SB3's default step size",
                         kwargs=dict(n_steps=64, batch_size=128, n_epochs=10, learning_rate=3e-4, gamma=0.95,
                                     gae_lambda=0.95)),
    "ppo_zoo": dict(algo="ppo", envs=SMALL_ENVS, reason="rl-zoo3's tuned Reacher-v2 PPO, 8 envs x 64 = its 512 steps",
                    kwargs=dict(n_steps=64, batch_size=32, gamma=0.9, learning_rate=1.04e-4, ent_coef=7.5e-8,
                                clip_range=0.3, n_epochs=5, gae_lambda=1.0, max_grad_norm=0.9, vf_coef=0.95)),
    "ppo_sb3": dict(algo="ppo", envs=SMALL_ENVS + ("AntGoal-v0",),
                    reason="SB3/rl-zoo3 MuJoCo defaults, 8 envs x 256 = the default 2048 steps",
                    kwargs=dict(n_steps=256, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99)),
    "ppo_ant256": dict(algo="ppo", envs=("AntGoal-v0",), reason="MuJoCo defaults with 4x larger minibatches: "
                       "less gradient noise and fewer updates per sample on the 31-d Ant",
                       kwargs=dict(n_steps=256, batch_size=256, n_epochs=10, learning_rate=3e-4)),
    "trpo_default": dict(algo="trpo", envs=SMALL_ENVS, reason="sb3_contrib TRPO defaults, 8 envs x 128 steps",
                         kwargs=dict(n_steps=128, batch_size=128, learning_rate=1e-3, target_kl=0.01, gamma=0.99)),
    "trpo_g95": dict(algo="trpo", envs=SMALL_ENVS, reason="TRPO with the shipped PPO's shorter horizon (50-step "
                     "episodes)", kwargs=dict(n_steps=128, batch_size=128, learning_rate=1e-3, target_kl=0.01,
                                              gamma=0.95, gae_lambda=0.95)),
}

# env -> (budget in env steps, evaluation interval): long enough for the curve to be flat.
BUDGETS: dict[str, tuple[int, int]] = {
    "ReacherGoal-v0": (500_000, 10_000), "PointmassGoal-v0": (300_000, 10_000), "AntGoal-v0": (2_000_000, 50_000)}


class EvalSchedule(BaseCallback):
    """Evaluate the deterministic policy on fixed validation goals at step 0, every ``every`` steps and at the budget.

    Evaluation goes through ``evaluate_task_metric``, which only calls ``normalize_obs`` of the training
    ``VecNormalize``: its statistics are not updated by evaluation episodes.
    """

    def __init__(self, env_id: str, goals: np.ndarray, every: int, budget: int, label: str) -> None:
        super().__init__()
        self.env_id, self.goals, self.every, self.budget, self.label = env_id, goals, every, budget, label
        self.steps: list[int] = []
        self.means: list[float] = []
        self.per_goal: list[list[float]] = []
        self.eval_time = 0.0
        self._next: float = min(every, budget)
        self._start = time.perf_counter()

    def _evaluate(self) -> None:
        t0 = time.perf_counter()
        values = evaluate_task_metric(self.model, self.env_id, self.goals, seed=EVAL_SEED,
                                      vec_normalize=self.model.get_vec_normalize_env())
        self.eval_time += time.perf_counter() - t0
        self.steps.append(int(self.num_timesteps))
        self.means.append(float(np.mean(values)))
        self.per_goal.append([float(v) for v in values])
        train_time = time.perf_counter() - self._start - self.eval_time
        speed = f", {self.num_timesteps / train_time:.0f} env steps/s" if self.num_timesteps and train_time > 0 else ""
        print(f"{self.label} step {self.num_timesteps}: metric {self.means[-1]:.3f} "
              f"({time.perf_counter() - self._start:.0f} s{speed})", flush=True)

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        self._evaluate()  # m_0: the initial policy

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._evaluate()
            self._next = math.inf if self._next >= self.budget else min(self._next + self.every, self.budget)
        return True


def result_path(out: str, env_id: str, config: str, seed: int) -> str:
    """Where one run's result goes: ``<out>/<env_id>/<algo>_<config>_seed<seed>.json``."""
    return os.path.join(out, env_id, f"{CONFIGS[config]['algo']}_{config}_seed{seed}.json")


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (no half-written files)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_config(env_id: str, config: str, seed: int, timesteps: int, eval_every: int, out: str) -> str:
    """Train and evaluate one (algo, config, env, seed) and write its JSON; returns the path (skipped if it exists)."""
    path = result_path(out, env_id, config, seed)
    if os.path.exists(path):
        print(f"{env_id} {config} seed {seed}: {path} exists, skipped", flush=True)
        return path
    spec = CONFIGS[config]
    algo_cls = ALGOS[spec["algo"]]
    kwargs = dict(spec["kwargs"])
    gamma = kwargs.get("gamma", 0.99)  # both algos default to 0.99; VecNormalize's return uses the algo's gamma
    venv = make_vec_env(env_id, n_envs=N_ENVS, seed=seed, env_kwargs={"task_split": "train"})
    venv = VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=gamma)
    goals = sample_tasks(env_id, VALIDATION_GOALS, "train", seed=VALIDATION_SEED)
    model = algo_cls("MlpPolicy", venv, policy_kwargs=POLICY_KWARGS, seed=seed, device="cpu", verbose=0, **kwargs)
    callback = EvalSchedule(env_id, goals, eval_every, timesteps, label=f"{env_id} {config} seed {seed}")
    t0 = time.perf_counter()
    model.learn(total_timesteps=timesteps, callback=callback)
    wall = time.perf_counter() - t0
    venv.close()
    train_time = wall - callback.eval_time
    result = dict(
        env_id=env_id, algo=spec["algo"], config=config, seed=seed, reason=spec["reason"], hyperparameters=kwargs,
        gamma=gamma, n_envs=N_ENVS, policy_kwargs=POLICY_KWARGS, task_split="train",
        vec_normalize=dict(norm_obs=True, norm_reward=True, gamma=gamma), timesteps=timesteps,
        eval_every=eval_every, env_steps_trained=int(model.num_timesteps),
        validation_goals=dict(n=VALIDATION_GOALS, split="train", seed=VALIDATION_SEED, goals=goals.tolist()),
        eval_seed=EVAL_SEED, curve=dict(steps=callback.steps, mean_metric=callback.means,
                                        per_goal_metric=callback.per_goal),
        wall_time_s=wall, eval_time_s=callback.eval_time, env_steps_per_s=model.num_timesteps / train_time,
        torch_threads=torch.get_num_threads(),
        versions=dict(stable_baselines3=stable_baselines3.__version__, torch=torch.__version__),
    )
    write_atomic(path, json.dumps(result, indent=1) + "\n")
    return path


def first_crossing(steps: Sequence[float], values: Sequence[float], m_0: float, target: float) -> float | None:
    """The first step at which ``values`` reaches ``target`` (coming from ``m_0``), linearly interpolated."""
    sign = 1.0 if target >= m_0 else -1.0
    for i, (s, v) in enumerate(zip(steps, values)):
        if sign * (v - target) >= 0:
            if i == 0:
                return float(s)
            s0, v0 = steps[i - 1], values[i - 1]
            return float(s0 + (s - s0) * (target - v0) / (v - v0)) if v != v0 else float(s)
    return None


def plateau_stats(steps: Sequence[int], values: Sequence[float], budget: int) -> dict[str, Any]:
    """Final, best, METRICS.md's flatness test and the plateau budget of one curve.

    m_final is the mean of the last 3 evaluations. The change over the last 20% is m_final minus the
    mean of the 3 evaluations ending at the first one at or after 80% of the budget (3-point means at
    both ends, so that one noisy evaluation does not decide it); "flat" when its size is under 5% of
    |m_final - m_0|. The plateau budget is the first step at which the curve reaches 95% of the way
    from m_0 to m_final (interpolated linearly between evaluations, as samples-to-80% is); since one
    noisy evaluation can cross that early, ``plateau_stays`` is the first evaluation from which the
    trailing 3-evaluation mean stays at or beyond it to the end. With too
    few evaluations for the two 3-point windows to be disjoint, "flat" is None (not testable).
    """
    steps_a, vals = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    m_0, m_final, best = float(vals[0]), float(vals[-3:].mean()), float(vals.max())
    i80 = int(np.searchsorted(steps_a, 0.8 * budget))
    i80 = min(i80, len(vals) - 1)
    m_80 = float(vals[max(0, i80 - 2): i80 + 1].mean())
    span = abs(m_final - m_0)
    change = m_final - m_80
    rel = change / span if span > 0 else math.inf
    target = m_0 + 0.95 * (m_final - m_0)
    sign = 1.0 if m_final >= m_0 else -1.0
    trailing = np.array([vals[max(0, i - 2): i + 1].mean() for i in range(len(vals))])
    below = np.flatnonzero(sign * (trailing - target) < 0)
    stays = int(below[-1]) + 1 if below.size else 0
    return dict(m_0=m_0, m_final=m_final, best=best, m_80=m_80, change_last20=change, change_rel=rel,
                flat=bool(abs(rel) < 0.05) if i80 < len(vals) - 3 else None,
                plateau_budget=first_crossing(steps_a, vals, m_0, target),
                plateau_stays=float(steps_a[min(stays, len(vals) - 1)]))


def write_summary(out: str, env_id: str) -> str:
    """Write ``<out>/<env_id>/summary.md``: one row per result file in the env's folder; returns its path."""
    results = []
    for path in glob.glob(os.path.join(out, env_id, "*.json")):
        with open(path) as f:
            results.append(json.load(f))
    order = list(CONFIGS)
    results.sort(key=lambda r: (order.index(r["config"]) if r["config"] in order else len(order), r["seed"]))
    rows = []
    for r in results:
        st = plateau_stats(r["curve"]["steps"], r["curve"]["mean_metric"], r["timesteps"])
        pb = "not reached" if st["plateau_budget"] is None else f"{st['plateau_budget'] / 1000:.0f}k"
        rows.append(f"| {r['config']} | {r['algo']} | {r['seed']} | {r['timesteps'] / 1000:.0f}k | {st['m_0']:.3f} | "
                    f"**{st['m_final']:.3f}** | {st['best']:.3f} | {st['change_last20']:+.3f} "
                    f"({100 * st['change_rel']:+.1f}%) | { {True: 'yes', False: 'no', None: 'n/a'}[st['flat']] } | {pb} | "
                    f"{st['plateau_stays'] / 1000:.0f}k | "
                    f"{r['wall_time_s']:.0f} | {r['env_steps_per_s']:.0f} |")
    text = "\n".join([
        f"# {env_id}: baseline sweep (train-split validation goals)", "",
        f"Written by `benchmarks/baseline_sweep.py`. {N_ENVS} envs, VecNormalize(obs + reward, gamma = the algo's), "
        f"[64, 64] actor and critic, trained on the train split; metric = mean task metric of the deterministic "
        f"policy on {VALIDATION_GOALS} train-split goals (`sample_tasks(..., 'train', seed={VALIDATION_SEED})`, "
        f"evaluation seed {EVAL_SEED}). Higher is better.", "",
        "final = mean of the last 3 evaluations; change = final minus the mean of the 3 evaluations ending at 80% "
        "of the budget, and as a fraction of |final - m_0|; flat = that fraction under 5% in size (METRICS.md); "
        "plateau budget = first step reaching 95% of the way from m_0 to final (linear interpolation); stays = "
        "first evaluation from which the trailing 3-evaluation mean stays at or beyond that level.", "",
        "| config | algo | seed | budget | m_0 | final | best | change, last 20% | flat | plateau budget | stays | "
        "wall (s) | env steps/s |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|", *rows, ""])
    path = os.path.join(out, env_id, "summary.md")
    write_atomic(path, text)
    return path


def _int_at_least(text: str, low: int, what: str) -> int:
    """Parse an integer >= ``low`` for argparse, with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (a budget, an interval)."""
    return _int_at_least(text, 1, "a positive integer")


def seed_int(text: str) -> int:
    """argparse type: an integer >= 0 (a seed)."""
    return _int_at_least(text, 0, "a non-negative integer")


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Run the sweep for one env (the configs given, else those whose ``envs`` list it); returns the JSON paths."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, choices=sorted(BUDGETS), help="the env to sweep")
    parser.add_argument("--out", required=True, help="results folder; files go to <out>/<env>/")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), help="default: all configs for the env")
    parser.add_argument("--timesteps", type=positive_int, help="env steps per run (default: the env's budget)")
    parser.add_argument("--eval-every", type=positive_int, help="env steps between evaluations (default per env)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the envs and the model (default 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core: the machine is shared
    budget, every = BUDGETS[args.env]
    timesteps, eval_every = args.timesteps or budget, args.eval_every or every
    configs = args.configs or [name for name, spec in CONFIGS.items() if args.env in spec["envs"]]
    paths = [run_config(args.env, c, args.seed, timesteps, eval_every, args.out) for c in configs]
    print(f"summary: {write_summary(args.out, args.env)}", flush=True)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
