"""Cheap oracles: the ceiling of an RL table where a controller written by hand solves the task.

Each has SB3's ``predict`` on a batch of raw observations (through :class:`ReferencePolicy`, the
base of every reference policy). Gains were tuned by hand on train-split
goals (never the held-out ones) with evaluation seed 12345.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sb3_ml3.envs.mountain_car import GRAVITY, MASS, MAX_FORCE


class ReferencePolicy:
    """Base of the references: SB3's ``predict`` on a batch of raw observations, through :meth:`act`."""

    description = ""

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        return self.act(np.asarray(observation, dtype=np.float64)).astype(np.float32), None

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The actions (float64, ``(n, action_dim)``) for a batch of observations ``(n, obs_dim)``."""
        raise NotImplementedError


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


class ReacherOracle(ReferencePolicy):
    """Analytic two-link inverse kinematics + a joint-space PD controller on the torques.

    The goal's joint angles solve the planar two-link arm (links 0.1 and 0.11, the fingertip's
    offset); of the two elbow solutions it takes, each step, the one closest to the current joint
    angles. Torque ``clip(kp * (q* - q) - kd * dq, -1, 1)``. Works on ReacherGoal-v0's observation
    (cos q, sin q, goal, dq, ...) and, with ``four_d``, on ReacherGoal4D-v0's ``(q1, q2, dq1, dq2, gx, gy)``.
    """

    LINKS = (0.1, 0.11)

    def __init__(self, kp: float = 5.0, kd: float = 0.3, four_d: bool = False) -> None:
        self.kp, self.kd, self.four_d = float(kp), float(kd), bool(four_d)
        self.description = f"inverse kinematics + joint PD (kp {self.kp:g}, kd {self.kd:g})"

    def _joint_state(self, obs: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.four_d:
            return obs[:, 0], obs[:, 1], obs[:, 2], obs[:, 3], obs[:, 4:6]
        q1, q2 = np.arctan2(obs[:, 2], obs[:, 0]), np.arctan2(obs[:, 3], obs[:, 1])
        return q1, q2, obs[:, 6], obs[:, 7], obs[:, 4:6]

    def act(self, obs: np.ndarray) -> np.ndarray:
        q1, q2, dq1, dq2, goal = self._joint_state(obs)
        l1, l2 = self.LINKS
        cos_elbow = np.clip((np.sum(goal**2, axis=1) - l1**2 - l2**2) / (2 * l1 * l2), -1.0, 1.0)
        q2 = _wrap(q2)  # the elbow is limited to +-3 rad: its error is never taken across +-pi
        errors = []
        for elbow in (np.arccos(cos_elbow), -np.arccos(cos_elbow)):
            shoulder = np.arctan2(goal[:, 1], goal[:, 0]) - np.arctan2(l2 * np.sin(elbow), l1 + l2 * np.cos(elbow))
            errors.append(np.stack([_wrap(shoulder - q1), elbow - q2], axis=1))
        closer = (np.sum(errors[0] ** 2, axis=1) <= np.sum(errors[1] ** 2, axis=1))[:, None]
        error = np.where(closer, errors[0], errors[1])
        torque = self.kp * error - self.kd * np.stack([dq1, dq2], axis=1)
        return np.clip(torque, -1.0, 1.0)


class PointmassOracle(ReferencePolicy):
    """A PD controller to the goal: acceleration ``clip(kp * (g - p) - kd * v, -1, 1)`` per axis.

    With kp = kd = 3 the point arrives within the episode's 5 s from every goal (|g| <= 2) and
    stops on it, so its final distance, the task metric, is about 0.
    """

    def __init__(self, kp: float = 3.0, kd: float = 3.0) -> None:
        self.kp, self.kd = float(kp), float(kd)
        self.description = f"PD controller to the goal (kp {self.kp:g}, kd {self.kd:g})"

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.clip(self.kp * (obs[:, 4:6] - obs[:, 0:2]) - self.kd * obs[:, 2:4], -1.0, 1.0)


class MountainCarOracle(ReferencePolicy):
    """Energy pumping, then holding the goal: the swing-back that greedy policies miss.

    Left of ``settle_from`` (x = 0, on the goal's side of the valley) it pushes with full force in
    the direction of its velocity (right when at rest), which swings the car up the goal hill within
    about 40 steps. Right of it a PD controller with gravity compensation holds the goal:
    ``force = m^2 |g| cos(3x) + m (kp (goal - x) - kd v)``, clipped to [-0.25, 0.25] (every goal
    beyond x = 0.29 can be held; module docstring of the env). Observation ``(x, v, goal)``.
    """

    def __init__(self, kp: float = 20.0, kd: float = 5.0, settle_from: float = 0.0) -> None:
        self.kp, self.kd, self.settle_from = float(kp), float(kd), float(settle_from)
        self.description = f"energy pumping, then PD + gravity compensation (kp {self.kp:g}, kd {self.kd:g})"

    def act(self, obs: np.ndarray) -> np.ndarray:
        x, v, goal = obs[:, 0], obs[:, 1], obs[:, 2]
        pump = MAX_FORCE * np.where(v >= 0.0, 1.0, -1.0)
        hold = -GRAVITY * MASS**2 * np.cos(3.0 * x) + MASS * (self.kp * (goal - x) - self.kd * v)
        force = np.where(x > self.settle_from, hold, pump)
        return np.clip(force, -MAX_FORCE, MAX_FORCE)[:, None]


def oracle_for(env_id: str) -> ReferencePolicy | None:
    """The cheap oracle of ``env_id`` (a new instance), or None where there is none (AntGoal-v0).

    For AntGoal the ceiling is a long-trained expert: load it with :class:`ExpertPolicy`.
    """
    factories = {"ReacherGoal": ReacherOracle, "ReacherGoal4D": lambda: ReacherOracle(four_d=True),
                 "PointmassGoal": PointmassOracle, "MountainCarGoal": MountainCarOracle}
    factory = factories.get(env_id.split("-v")[0])
    return None if factory is None else factory()


__all__ = ["ReferencePolicy", "MountainCarOracle", "PointmassOracle", "ReacherOracle", "oracle_for"]
