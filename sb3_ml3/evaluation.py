"""The paper's task metrics (METRICS.md), evaluated with the deterministic policy on fixed tasks.

Every algorithm is judged the same way: one episode per held-out goal, the Gaussian's mean as the
action, fixed evaluation seeds, and the per-env metric below (higher is better).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

#: metric of one episode from its per-step infos and rewards (higher is better)
EpisodeMetric = Callable[[list[dict[str, Any]], list[float]], float]


def _sum_negative_distance(infos: list[dict[str, Any]], rewards: list[float]) -> float:
    return -float(sum(info["distance"] for info in infos))


def _sum_progress(infos: list[dict[str, Any]], rewards: list[float]) -> float:
    return float(sum(info["initial_distance"] - info["distance"] for info in infos))


def _negative_final_distance(infos: list[dict[str, Any]], rewards: list[float]) -> float:
    return -float(infos[-1]["distance"])


def _episode_return(infos: list[dict[str, Any]], rewards: list[float]) -> float:
    return float(sum(rewards))


#: env id (without version) -> the paper's metric (Appendix A); other envs use the episode return.
TASK_METRICS: dict[str, EpisodeMetric] = {
    "ReacherGoal": _sum_negative_distance,
    "ReacherGoal4D": _sum_negative_distance,
    "AntGoal": _sum_progress,
    "PointmassGoal": _negative_final_distance,
    "MountainCarGoal": _negative_final_distance,
}


def task_metric_for(env_id: str) -> EpisodeMetric:
    return TASK_METRICS.get(env_id.split("-v")[0], _episode_return)


def evaluate_task_metric(
    model: BaseAlgorithm,
    env_id: str,
    goals: Sequence[Sequence[float]] | np.ndarray,
    seed: int = 12345,
    env_kwargs: dict[str, Any] | None = None,
    vec_normalize: VecNormalize | None = None,
    return_steps: bool = False,
) -> np.ndarray | tuple[np.ndarray, int]:
    """The task metric of ``model``'s deterministic policy, one episode per goal; shape ``(n_goals,)``.

    All goals run in lockstep so the policy sees one batch per step. ``vec_normalize`` (the training
    env's, if any) normalises the observations as the policy saw them in training. With
    ``return_steps`` the env steps the evaluation took come back too (to charge them to a budget).
    """
    metric = task_metric_for(env_id)
    goals = np.asarray(goals, dtype=np.float64)
    if goals.ndim == 1:
        goals = goals[:, None]
    envs = [gym.make(env_id, goal=goal, **(env_kwargs or {})) for goal in goals]
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
        infos: list[list[dict[str, Any]]] = [[] for _ in envs]
        rewards: list[list[float]] = [[] for _ in envs]
        running = np.ones(len(envs), dtype=bool)
        while running.any():
            policy_obs = vec_normalize.normalize_obs(obs) if vec_normalize is not None else obs
            actions, _ = model.predict(policy_obs, deterministic=True)
            for i, env in enumerate(envs):
                if not running[i]:
                    continue
                obs[i], reward, terminated, truncated, info = env.step(actions[i])
                infos[i].append(info)
                rewards[i].append(float(reward))
                running[i] = not (terminated or truncated)
    finally:
        for env in envs:
            env.close()
    values = np.array([metric(i, r) for i, r in zip(infos, rewards)])
    return (values, sum(len(r) for r in rewards)) if return_steps else values


__all__ = ["TASK_METRICS", "task_metric_for", "evaluate_task_metric"]
