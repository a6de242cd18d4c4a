"""Batched episodes of ReacherGoal-v0 on fixed goals: the rollouts of ``ml3 reacher-experts``.

One MuJoCo env per goal, stepped in lock-step, so that a batch of policies (one per goal, or one
goal-conditioned policy) acts on all goals with one forward pass per time step. No gradient flows
through MuJoCo: a rollout returns plain arrays of the states visited, the actions taken and the
fingertip-goal distance after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sb3_ml3.envs.reacher import ReacherGoalEnv

#: ReacherGoal-v0's episode length (its registration's max_episode_steps)
EPISODE_STEPS = 50
#: a random initial arm: shoulder uniform on the circle, elbow within its joint range (+-3 rad) less a margin,
#: joint velocities uniform in +-RANDOM_ARM_SPEED rad/s
RANDOM_ELBOW = 2.8
RANDOM_ARM_SPEED = 1.0

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Trajectories:
    """One episode per goal: ``states (G, T, 10)`` (the observation each action was chosen from),
    ``actions (G, T, 2)`` (as given, before the env's clipping) and ``distances (G, T)`` (after each step)."""

    states: np.ndarray
    actions: np.ndarray
    distances: np.ndarray

    @property
    def final_distance(self) -> np.ndarray:
        """The fingertip-goal distance at the end of each episode, ``(G,)``: the success criterion's number."""
        return self.distances[:, -1]


class GoalRollouts:
    """ReacherGoal-v0 envs pinned to ``goals`` (``(G, 2)``), one per goal, stepped together.

    :param goals: the targets; each must be within the arm's reach (the env checks it).
    :param episode_steps: steps per episode (ReacherGoal-v0's 50 by default).
    """

    def __init__(self, goals: np.ndarray | Sequence[Sequence[float]], episode_steps: int = EPISODE_STEPS) -> None:
        goals = np.asarray(goals, dtype=np.float64)
        if goals.ndim != 2 or goals.shape[1] != 2 or len(goals) == 0:
            raise ValueError(f"goals must have shape (G, 2) with G >= 1, got {goals.shape}.")
        if episode_steps < 1:
            raise ValueError(f"episode_steps must be at least 1, got {episode_steps}.")
        self.goals = goals
        self.episode_steps = int(episode_steps)
        self.envs = [ReacherGoalEnv(task_split="all", goal=goal) for goal in goals]

    def __len__(self) -> int:
        return len(self.envs)

    def run(self, policy: PolicyFn, seeds: Sequence[int], random_arm: bool = False) -> Trajectories:
        """One episode on every goal; env ``i`` is reset with ``seeds[i]`` (its initial joint noise).

        ``policy`` maps the batch of observations ``(G, 10)`` to actions ``(G, 2)``. With ``random_arm`` the
        episode starts from an arm drawn (from ``seeds[i]``) over the whole joint space instead of ReacherGoal's
        reset near the straight arm: demonstrations that cover the states a learner may visit.
        """
        if len(seeds) != len(self.envs):
            raise ValueError(f"need one reset seed per goal ({len(self.envs)}), got {len(seeds)}.")
        n, steps = len(self.envs), self.episode_steps
        states = np.empty((n, steps, 10), dtype=np.float32)
        actions = np.empty((n, steps, 2), dtype=np.float32)
        distances = np.empty((n, steps), dtype=np.float64)
        obs = np.stack([self._reset(env, int(s), random_arm) for env, s in zip(self.envs, seeds)])
        for t in range(steps):
            action = np.asarray(policy(obs), dtype=np.float32)
            if action.shape != (n, 2):
                raise ValueError(f"the policy must return actions of shape ({n}, 2) for {n} observations, "
                                 f"got {action.shape}.")
            if not np.all(np.isfinite(action)):
                action = np.nan_to_num(action, nan=0.0, posinf=1.0, neginf=-1.0)  # a diverged policy: clipped
            states[:, t], actions[:, t] = obs, action
            for i, env in enumerate(self.envs):
                o, _, _, _, info = env.step(action[i])
                obs[i] = o
                distances[i, t] = info["distance"]
        return Trajectories(states, actions, distances)

    @staticmethod
    def _reset(env: ReacherGoalEnv, seed: int, random_arm: bool) -> np.ndarray:
        obs, _ = env.reset(seed=seed)
        if not random_arm:
            return obs
        rng = np.random.default_rng([seed, 1])
        base = env.unwrapped
        qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
        qpos[:2] = rng.uniform(-np.pi, np.pi), rng.uniform(-RANDOM_ELBOW, RANDOM_ELBOW)
        qvel[:2] = rng.uniform(-RANDOM_ARM_SPEED, RANDOM_ARM_SPEED, size=2)
        base.set_state(qpos, qvel)  # the goal's slide joints keep their values
        return base._get_obs()

    def close(self) -> None:
        for env in self.envs:
            env.close()


def one_goal_per_sector(split: str, seed: int) -> np.ndarray:
    """One goal drawn from each of the split's four 45-degree sectors (``(4, 2)``), deterministic per seed.

    The paper's four training targets (Fig. 6c) spread over the training region rather than four
    draws that may crowd one sector.
    """
    from sb3_ml3.envs.tasks import AnnulusSectors

    region = ReacherGoalEnv.build_task_regions()[split]
    rng = np.random.default_rng(seed)
    return np.stack([AnnulusSectors(region.r_min, region.r_max, [sector]).sample(rng) for sector in region.sectors])


__all__ = ["EPISODE_STEPS", "GoalRollouts", "Trajectories", "one_goal_per_sector"]
