"""Expert controllers and their demonstrations for ReacherGoal-v0 (paper Sec. IV.B.4, Fig. 6c).

The paper's demonstrations are iLQR-optimised trajectories. Here the expert is the **analytic
inverse kinematics + joint-space PD controller** (stated in every report): for a planar two-link
arm the joint angles that put the fingertip on a goal have a closed form, and a PD law on them
reaches every goal of ReacherGoal's annulus to within 1e-6 in 50 steps, so it is a cheap,
exact and reliable teacher. ``pi_expert(s)`` is defined at **every** state, which the
behavioural-cloning task loss sum_t ||pi_theta'(s_t) - pi_expert(s_t)||^2 reads at the
demonstration states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sb3_ml3.model_based.reacher_experts_env import GoalRollouts

#: link lengths of Reacher's model: upper arm 0.1, fingertip offset on the forearm 0.11
LINKS = (0.1, 0.11)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


class ReacherIKPDExpert:
    """pi_expert(s) = clip(kp (q*(g) - q) - kd dq, -1, 1) on ReacherGoal-v0's observation.

    q*(g) solves the two-link inverse kinematics of goal g (elbow angle from the law of cosines,
    shoulder from the goal's bearing); of the two elbow solutions it takes the one nearer the
    current joints, so the arm never swings through the far configuration. The shoulder error is
    wrapped to (-pi, pi]; the elbow (limited to +-3 rad) is not, so its error never crosses +-pi.

    :param kp: proportional gain on the joint-angle error (torque units per radian, before clipping).
    :param kd: damping on the joint velocities.
    """

    def __init__(self, kp: float = 5.0, kd: float = 0.3) -> None:
        if not (kp > 0 and kd >= 0):
            raise ValueError(f"need kp > 0 and kd >= 0, got kp={kp}, kd={kd}.")
        self.kp, self.kd = float(kp), float(kd)
        self.description = f"analytic inverse kinematics + joint PD (kp {self.kp:g}, kd {self.kd:g})"

    @staticmethod
    def joint_targets(goals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both IK solutions ``(G, 2, 2)`` [solution, (shoulder, elbow)] and whether each goal is reachable."""
        goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
        l1, l2 = LINKS
        cos_elbow = (np.sum(goals**2, axis=1) - l1**2 - l2**2) / (2 * l1 * l2)
        reachable = np.abs(cos_elbow) <= 1.0
        elbow = np.arccos(np.clip(cos_elbow, -1.0, 1.0))
        solutions = []
        for e in (elbow, -elbow):
            shoulder = np.arctan2(goals[:, 1], goals[:, 0]) - np.arctan2(l2 * np.sin(e), l1 + l2 * np.cos(e))
            solutions.append(np.stack([_wrap(shoulder), e], axis=1))
        return np.stack(solutions, axis=1), reachable

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Torques ``(n, 2)`` in [-1, 1] for observations ``(n, 10)`` (or one observation ``(10,)``)."""
        obs = np.asarray(obs, dtype=np.float64)
        single = obs.ndim == 1
        obs = obs.reshape(-1, obs.shape[-1])
        if obs.shape[1] != 10:
            raise ValueError(f"ReacherIKPDExpert reads ReacherGoal-v0's 10-value observation, got width {obs.shape[1]}.")
        q = np.stack([np.arctan2(obs[:, 2], obs[:, 0]), _wrap(np.arctan2(obs[:, 3], obs[:, 1]))], axis=1)
        dq = obs[:, 6:8]
        targets, _ = self.joint_targets(obs[:, 4:6])
        errors = targets - q[:, None, :]
        errors[..., 0] = _wrap(errors[..., 0])
        nearer = np.argmin(np.sum(errors**2, axis=2), axis=1)
        error = errors[np.arange(len(obs)), nearer]
        torque = np.clip(self.kp * error - self.kd * dq, -1.0, 1.0)
        return torque[0] if single else torque

    __call__ = act


@dataclass
class Demonstrations:
    """Expert episodes on fixed targets: ``states (G, D, T, 10)``, ``actions (G, D, T, 2)``, per goal ``g``
    and demonstration ``d``; ``final_distance (G, D)``; ``goals (G, 2)``."""

    goals: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    final_distance: np.ndarray

    def per_goal(self) -> tuple[np.ndarray, np.ndarray]:
        """States ``(G, D*T, 10)`` and expert actions ``(G, D*T, 2)``: the BC data of each target."""
        g, d, t, _ = self.states.shape
        return self.states.reshape(g, d * t, -1), self.actions.reshape(g, d * t, -1)

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All targets' states ``(G*D*T, 10)`` and actions ``(G*D*T, 2)``: a goal-conditioned BC data set."""
        states, actions = self.per_goal()
        return states.reshape(-1, states.shape[-1]), actions.reshape(-1, actions.shape[-1])


def collect_demonstrations(goals: np.ndarray | Sequence[Sequence[float]], n_per_goal: int, seed: int,
                           expert: ReacherIKPDExpert | None = None, random_arm: bool = False) -> Demonstrations:
    """``n_per_goal`` expert episodes on each goal (reset seeds ``seed, seed + 1, ...``: different initial arms).

    ``random_arm``: each episode starts from an arm drawn over the whole joint space
    (:meth:`GoalRollouts.run`), not ReacherGoal's reset near the straight arm.
    """
    if n_per_goal < 1:
        raise ValueError(f"n_per_goal must be at least 1, got {n_per_goal}.")
    expert = expert or ReacherIKPDExpert()
    rollouts = GoalRollouts(goals)
    episodes = [rollouts.run(expert.act, [seed + d] * len(rollouts), random_arm=random_arm) for d in range(n_per_goal)]
    rollouts.close()
    return Demonstrations(
        goals=np.asarray(goals, dtype=np.float64),
        states=np.stack([e.states for e in episodes], axis=1),
        actions=np.stack([e.actions for e in episodes], axis=1),
        final_distance=np.stack([e.final_distance for e in episodes], axis=1),
    )


__all__ = ["LINKS", "ReacherIKPDExpert", "Demonstrations", "collect_demonstrations"]
