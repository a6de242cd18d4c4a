"""The paper's task metrics (METRICS.md), evaluated with the deterministic policy on fixed tasks.

Every algorithm is judged the same way: one episode per held-out goal, the Gaussian's mean as the
action, fixed evaluation seeds, and the per-env metric below (higher is better).

Beside the number, :func:`evaluate_policy_on_goals` records how the policy behaves (METRICS.md,
"behaviour beside the number"): the final distance to the goal, whether it ends within the env's
success threshold, and the fraction of action components on the bounds of the action box. A
policy whose metric looks fine but whose actions sit on the bounds is a bang-bang or constant
policy, and the table should say so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecNormalize

#: metric of one episode from its per-step infos and rewards (higher is better)
EpisodeMetric = Callable[[list[dict[str, Any]], list[float]], float]

#: an action component counts as "on the bound" when it lies within this fraction of the box's
#: half-width from a bound (|a| >= 0.95 * bound for the symmetric boxes of these envs; METRICS.md)
SATURATION_FRACTION = 0.95


class Predictor(Protocol):
    """Anything with SB3's ``predict``: an SB3 model, or a reference policy."""

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]: ...


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


def success_threshold_for(env_id: str) -> float:
    """The env's success threshold: an episode succeeds when its final distance to the goal is below it.

    Read from the env class's ``success_threshold`` attribute (stated in each env's docstring).
    """
    import sb3_ml3.envs  # noqa: F401  (registers the goal envs)
    from sb3_ml3.envs import env_class

    threshold = getattr(env_class(env_id), "success_threshold", None)
    if threshold is None:
        raise ValueError(
            f"{env_id} has no success threshold: give its env class a class attribute `success_threshold` "
            "(the final distance to the goal under which an episode counts as a success) and state it in "
            "its docstring."
        )
    return float(threshold)


def _threshold_or_nan(env_id: str) -> float:
    """:func:`success_threshold_for`, or NaN (no episode succeeds) for an env that states none."""
    try:
        return success_threshold_for(env_id)
    except ValueError:
        return float("nan")


@dataclass(frozen=True)
class EvaluationResult:
    """One deterministic episode per goal: the task metric and the behaviour behind it.

    All per-goal fields are arrays of shape ``(n_goals,)``.

    Attributes:
        metric: the paper's task metric (METRICS.md), higher is better.
        final_distance: ``info["distance"]`` at the episode's last step.
        success: ``final_distance < success_threshold`` (all False for an env without a threshold
            or without ``info["distance"]``: then ``final_distance`` is NaN too).
        saturation: fraction of the episode's action components on the bounds (within 5% of the
            box's half-width from a bound), measured on the action the env receives after clipping
            to the action space.
        steps: the number of env steps of the episode.
        success_threshold: the env's threshold (:func:`success_threshold_for`; NaN if it has none).
    """

    metric: np.ndarray
    final_distance: np.ndarray
    success: np.ndarray
    saturation: np.ndarray
    steps: np.ndarray
    success_threshold: float

    @property
    def mean_metric(self) -> float:
        return float(np.mean(self.metric))

    @property
    def mean_final_distance(self) -> float:
        return float(np.mean(self.final_distance))

    @property
    def mean_success(self) -> float:
        """The success rate over the goals, in [0, 1]."""
        return float(np.mean(self.success))

    success_rate = mean_success

    @property
    def mean_saturation(self) -> float:
        return float(np.mean(self.saturation))

    @property
    def mean_steps(self) -> float:
        return float(np.mean(self.steps))

    @property
    def total_steps(self) -> int:
        """Env steps the evaluation took (to charge them to a budget)."""
        return int(np.sum(self.steps))

    def to_dict(self) -> dict[str, Any]:
        """Plain floats, bools and lists (JSON-ready): the per-goal lists and their means."""
        return {
            "metric": [float(v) for v in self.metric],
            "final_distance": [float(v) for v in self.final_distance],
            "success": [bool(v) for v in self.success],
            "saturation": [float(v) for v in self.saturation],
            "steps": [int(v) for v in self.steps],
            "success_threshold": float(self.success_threshold),
            "mean_metric": self.mean_metric,
            "mean_final_distance": self.mean_final_distance,
            "success_rate": self.mean_success,
            "mean_saturation": self.mean_saturation,
        }


def _on_bounds(action: np.ndarray, space: gym.spaces.Space) -> tuple[int, int]:
    """``(components on the bounds, components)`` of one action, after clipping it to a Box space."""
    if not isinstance(space, gym.spaces.Box):
        return 0, 0  # saturation is only defined for continuous boxes
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    a = np.clip(np.asarray(action, dtype=np.float64).reshape(space.shape), low, high)
    centre, half_width = (high + low) / 2.0, (high - low) / 2.0
    on = np.abs(a - centre) >= SATURATION_FRACTION * half_width
    return int(on.sum()), int(on.size)


def evaluate_policy_on_goals(
    policy: Predictor,
    env_id: str,
    goals: Sequence[Sequence[float]] | np.ndarray,
    seed: int = 12345,
    env_kwargs: dict[str, Any] | None = None,
    vec_normalize: VecNormalize | None = None,
) -> EvaluationResult:
    """One deterministic episode of ``policy`` per goal, in lockstep: metric and behaviour per goal.

    ``policy`` is anything with SB3's ``predict(obs, deterministic=True) -> (actions, state)``,
    called on the batch of all running goals' observations each step. Goal ``i``'s episode starts
    from ``reset(seed=seed + i)``, so every policy compared sees the same start states.
    ``vec_normalize`` (the training env's, if any) normalises the observations as the policy saw
    them in training; pass None for policies that act on raw observations (the references).
    """
    metric = task_metric_for(env_id)
    threshold = _threshold_or_nan(env_id)
    goals = np.asarray(goals, dtype=np.float64)
    if goals.ndim == 1:
        goals = goals[:, None]
    if len(goals) == 0:
        raise ValueError(f"evaluate_policy_on_goals needs at least one goal for {env_id}; got none.")
    envs = [gym.make(env_id, goal=goal, **(env_kwargs or {})) for goal in goals]
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
        infos: list[list[dict[str, Any]]] = [[] for _ in envs]
        rewards: list[list[float]] = [[] for _ in envs]
        bound_counts = np.zeros((len(envs), 2), dtype=np.int64)  # (on the bounds, components)
        running = np.ones(len(envs), dtype=bool)
        while running.any():
            policy_obs = vec_normalize.normalize_obs(obs) if vec_normalize is not None else obs
            actions, _ = policy.predict(policy_obs, deterministic=True)
            for i, env in enumerate(envs):
                if not running[i]:
                    continue
                bound_counts[i] += _on_bounds(actions[i], env.action_space)
                obs[i], reward, terminated, truncated, info = env.step(actions[i])
                infos[i].append(info)
                rewards[i].append(float(reward))
                running[i] = not (terminated or truncated)
    finally:
        for env in envs:
            env.close()
    final_distance = np.array([float(i[-1].get("distance", np.nan)) for i in infos])
    return EvaluationResult(
        metric=np.array([metric(i, r) for i, r in zip(infos, rewards)]),
        final_distance=final_distance,
        success=final_distance < threshold,
        saturation=bound_counts[:, 0] / np.maximum(bound_counts[:, 1], 1),
        steps=np.array([len(r) for r in rewards], dtype=np.int64),
        success_threshold=threshold,
    )


def evaluate_task_metric(
    model: Predictor,
    env_id: str,
    goals: Sequence[Sequence[float]] | np.ndarray,
    seed: int = 12345,
    env_kwargs: dict[str, Any] | None = None,
    vec_normalize: VecNormalize | None = None,
    return_steps: bool = False,
) -> np.ndarray | tuple[np.ndarray, int]:
    """The task metric of ``model``'s deterministic policy, one episode per goal; shape ``(n_goals,)``.

    The metric of :func:`evaluate_policy_on_goals` (same episodes). ``vec_normalize`` (the training
    env's, if any) normalises the observations as the policy saw them in training. With
    ``return_steps`` the env steps the evaluation took come back too (to charge them to a budget).
    """
    result = evaluate_policy_on_goals(model, env_id, goals, seed=seed, env_kwargs=env_kwargs,
                                      vec_normalize=vec_normalize)
    return (result.metric, result.total_steps) if return_steps else result.metric


__all__ = [
    "SATURATION_FRACTION",
    "TASK_METRICS",
    "EvaluationResult",
    "Predictor",
    "evaluate_policy_on_goals",
    "evaluate_task_metric",
    "success_threshold_for",
    "task_metric_for",
]
