"""Behavioural cloning of an expert on train-split data, evaluated on ``ml3 compare``'s held-out goals.

    python benchmarks/bc_baseline.py AntGoal-v0 --expert docs/results/ant_imitation/expert_ppo_train_seed0_3M.zip \\
        --samples 200000 --epochs 20 --seeds 0 1 2 --out docs/results/ant_tuned/bc [--dagger-rounds 3]

Why: an ML3 loss meta-trained with a behavioural-cloning task loss against a PPO expert is compared
with the tuned PPO *and* with plain behavioural cloning of the same expert on the same data (the
train-split goals). This script gives the BC row.

* **data**: ``--samples`` state-action pairs from the expert's own deterministic rollouts on the
  train-split goals (``make_train_env(env_id, 8, --data-seed, split="train")``, raw observations; an
  expert trained with VecNormalize normalises them itself, see ``ExpertPolicy``), the expert's actions
  clipped to the action box. One data set serves every student seed. With ``--dagger-rounds K``
  (classic DAgger), after each round every student rolls out its deterministic policy for
  ``--dagger-samples`` steps on the train-split goals, the expert labels those states, they join the
  student's data set, and training continues on the aggregate for another ``--epochs`` epochs.
* **student**: a fresh SB3 ``ActorCriticPolicy`` with ``policy_kwargs_for([64, 64])``, the initial
  policy of its seed that every algorithm of ``ml3 compare`` starts from (``initial_policy_state``).
  Its Gaussian mean (unclipped) is trained by Adam (lr ``--learning-rate``, minibatches of
  ``--batch-size``) on the squared error to the expert's clipped actions (summed over the action
  components, averaged over the minibatch: the ``imitation`` task loss's scale; Adam does not care).
* **evaluation**: ``ml3 compare``'s, on ``sample_tasks(env_id, 10, "test", seed=TASK_SEED)`` with
  ``evaluate_policy_on_goals(policy, env_id, goals, seed=EVAL_SEED)`` (deterministic: the mean, clipped),
  before training and after every epoch. The expert itself is evaluated the same way.

``<out>/results.json`` (written atomically) holds per seed the curve (epoch, gradient steps, BC loss,
metric, final distance, success rate, saturation), the final mean and s.e. over seeds, the samples
used (expert-labelled env steps), the expert's evaluation, the wall time and the command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv

from sb3_ml3.envs import sample_tasks
from sb3_ml3.evaluation import EvaluationResult, evaluate_policy_on_goals
from sb3_ml3.experiments import (EVAL_SEED, TASK_SEED, atomic_write_json, initial_policy_state, make_train_env,
                                 policy_kwargs_for, prepare_out_dir)
from sb3_ml3.experiments.references import ExpertPolicy

NET_ARCH = [64, 64]
N_ENVS = 8
#: the fields of an evaluation kept in a curve point and averaged over seeds at the end
FIELDS = ("metric", "final_distance", "success_rate", "saturation")


def evaluation_fields(result: EvaluationResult) -> dict[str, float]:
    """The means over the goals that a curve point records."""
    return {"metric": result.mean_metric, "final_distance": result.mean_final_distance,
            "success_rate": result.mean_success, "saturation": result.mean_saturation}


def expert_labels(expert: ExpertPolicy, observations: np.ndarray, env: VecEnv) -> np.ndarray:
    """The expert's deterministic actions at ``observations``, clipped to the action box."""
    actions, _ = expert.predict(observations, deterministic=True)
    return np.clip(actions, env.action_space.low, env.action_space.high).astype(np.float32)


def collect(env: VecEnv, expert: ExpertPolicy, n_samples: int,
            actor: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``n_samples`` states visited by ``actor`` (the expert if None) with the expert's labels.

    Returns ``(observations, expert actions, env steps taken)``; the last vector step may overshoot,
    its extra states are dropped (but counted as env steps).
    """
    observations, labels, steps = [], [], 0
    obs = env.reset()
    while steps < n_samples:
        label = expert_labels(expert, obs, env)
        observations.append(np.asarray(obs, dtype=np.float32).copy())
        labels.append(label)
        obs, _, _, _ = env.step(label if actor is None else actor(obs))
        steps += env.num_envs
    return np.concatenate(observations)[:n_samples], np.concatenate(labels)[:n_samples], steps


def fresh_student(env: VecEnv, seed: int) -> ActorCriticPolicy:
    """The initial policy of ``seed`` that every algorithm of ``ml3 compare`` starts from."""
    state = initial_policy_state(env, seed, NET_ARCH)
    policy = ActorCriticPolicy(env.observation_space, env.action_space, lambda _: 0.0, **policy_kwargs_for(NET_ARCH))
    policy.load_state_dict(state)
    return policy


def mean_actions(policy: ActorCriticPolicy, observations: torch.Tensor) -> torch.Tensor:
    """The Gaussian's mean (unclipped) at ``observations``."""
    latent_pi = policy.mlp_extractor.forward_actor(policy.extract_features(observations, policy.pi_features_extractor))
    return policy.action_net(latent_pi)


def bc_loss(policy: ActorCriticPolicy, observations: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||mu(s) - a_E(s)||^2, averaged over the states."""
    return ((mean_actions(policy, observations) - labels) ** 2).sum(-1).mean()


def train_student(args: argparse.Namespace, seed: int, expert: ExpertPolicy, data: tuple[np.ndarray, np.ndarray],
                  goals: np.ndarray) -> dict[str, Any]:
    """One student: BC (plus DAgger rounds) with an evaluation on the held-out goals after every epoch."""
    env = make_train_env(args.env_id, N_ENVS, seed, split="train")
    policy = fresh_student(env, seed)
    parameters = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=args.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    observations, labels = torch.as_tensor(data[0]), torch.as_tensor(data[1])
    start, grad_steps, epoch, dagger_steps, curve = time.time(), 0, 0, 0, []

    def evaluate(loss: float | None) -> None:
        point = {"epoch": epoch, "gradient_steps": grad_steps, "bc_loss": loss, "data_size": len(observations),
                 **evaluation_fields(evaluate_policy_on_goals(policy, args.env_id, goals, seed=EVAL_SEED))}
        curve.append(point)
        print(f"seed {seed} epoch {epoch} ({grad_steps} steps, {len(observations)} pairs): bc loss "
              f"{'-' if loss is None else f'{loss:.4f}'}, metric {point['metric']:.2f}, final distance "
              f"{point['final_distance']:.3f}, success {point['success_rate']:.2f}, saturation "
              f"{point['saturation']:.3f} ({time.time() - start:.0f} s)", flush=True)

    with torch.no_grad():
        evaluate(float(bc_loss(policy, observations, labels)))
    for round_ in range(args.dagger_rounds + 1):
        if round_ > 0:  # DAgger: the student's own states, labelled by the expert, join its data
            def actor(obs: np.ndarray) -> np.ndarray:
                return policy.predict(obs, deterministic=True)[0]
            new_obs, new_labels, steps = collect(env, expert, args.dagger_samples, actor)
            dagger_steps += steps
            observations = torch.cat([observations, torch.as_tensor(new_obs)])
            labels = torch.cat([labels, torch.as_tensor(new_labels)])
        for _ in range(args.epochs):
            order, total = torch.randperm(len(observations), generator=generator), 0.0
            for index in order.split(args.batch_size):
                loss = bc_loss(policy, observations[index], labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                grad_steps += 1
            epoch += 1
            evaluate(total / len(observations))
    env.close()
    return {"curve": curve, "final": {k: curve[-1][k] for k in FIELDS}, "dagger_env_steps": dagger_steps,
            "wall_time_s": time.time() - start}


def mean_and_se(values: list[float]) -> dict[str, Any]:
    """Mean and standard error over seeds (s.e. = std with ddof 1 / sqrt(n); 0 for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "se": se, "per_seed": [float(x) for x in v]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id")
    parser.add_argument("--expert", required=True, help="a saved SB3 PPO model (benchmarks/train_expert.py)")
    parser.add_argument("--samples", type=int, default=200_000, help="expert state-action pairs (env steps)")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the data set, per DAgger round")
    parser.add_argument("--dagger-rounds", type=int, default=0)
    parser.add_argument("--dagger-samples", type=int, default=50_000, help="student env steps per DAgger round")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the expert's data envs")
    parser.add_argument("--out", required=True, help="folder for results.json")
    parser.add_argument("--force", action="store_true", help="overwrite an earlier results.json in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        prepare_out_dir(args.out, force=args.force)
    except ValueError as error:
        parser.error(str(error))
    start = time.time()
    expert = ExpertPolicy(args.expert)
    goals = np.asarray(sample_tasks(args.env_id, 10, "test", seed=TASK_SEED))
    expert_result = evaluate_policy_on_goals(expert, args.env_id, goals, seed=EVAL_SEED)
    print(f"expert on the held-out goals: metric {expert_result.mean_metric:.2f}, final distance "
          f"{expert_result.mean_final_distance:.3f}, success {expert_result.mean_success:.2f}, saturation "
          f"{expert_result.mean_saturation:.3f}", flush=True)
    data_env = make_train_env(args.env_id, N_ENVS, args.data_seed, split="train")
    observations, labels, data_steps = collect(data_env, expert, args.samples)
    data_env.close()
    print(f"{len(observations)} expert pairs on the train-split goals ({data_steps} env steps, "
          f"{time.time() - start:.0f} s)", flush=True)
    runs = {str(seed): train_student(args, seed, expert, (observations, labels), goals) for seed in args.seeds}
    final = {k: mean_and_se([run["final"][k] for run in runs.values()]) for k in FIELDS}
    dagger = [run["dagger_env_steps"] for run in runs.values()]
    results = {
        "env_id": args.env_id, "expert": args.expert, "expert_vec_normalize": expert.vec_normalize_path,
        "net_arch": NET_ARCH, "samples": args.samples, "epochs_per_round": args.epochs,
        "dagger_rounds": args.dagger_rounds, "dagger_samples_per_round": args.dagger_samples if args.dagger_rounds else 0,
        "learning_rate": args.learning_rate, "batch_size": args.batch_size, "seeds": args.seeds,
        "data_seed": args.data_seed, "eval_seed": EVAL_SEED, "task_seed": TASK_SEED, "goals": goals.tolist(),
        "samples_used": {"expert_env_steps": data_steps, "dagger_env_steps_per_seed": dagger,
                         "total_per_seed": [data_steps + d for d in dagger]},
        "expert_evaluation": expert_result.to_dict(), "final": final, "runs": runs,
        "wall_time_s": time.time() - start,
        "command": shlex.join(["python", os.path.relpath(sys.argv[0]) if argv is None else "bc_baseline.py",
                               *(sys.argv[1:] if argv is None else argv)]),
    }
    atomic_write_json(os.path.join(args.out, "results.json"), results)
    print("final over seeds: " + ", ".join(f"{k} {v['mean']:.3f} +- {v['se']:.3f}" for k, v in final.items())
          + f"; expert {expert_result.mean_metric:.2f}; {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
