"""ReacherGoal: Gymnasium's MuJoCo Reacher-v5 2-link arm with the paper's goal tasks and reward.

``ReacherGoalEnv`` subclasses ``gymnasium.envs.mujoco.reacher_v5.ReacherEnv`` (same model,
``frame_skip=2``, ``dt = 0.02``, 50-step episodes, same initial-configuration noise) and changes

* the **goal**: drawn from a task split instead of uniformly from the disc of radius 0.2;
* the **reward** (ML3, Appendix A): ``R = -d + 1 / (d + 0.001) - sum_i |a_i|`` where ``d`` is the
  distance from the fingertip to the goal after the step (the fingertip position MuJoCo reports
  after ``mj_step``, as Reacher-v5's ``reward_dist`` uses) and ``a`` the applied (clipped) action;
* the **observation**: Reacher-v5's 10 values as float32 -- ``cos(q1), cos(q2), sin(q1), sin(q2),
  gx, gy, dq1, dq2, (fingertip - goal)_x, (fingertip - goal)_y`` -- so ``goal_slice = slice(4, 6)``.

Tasks: the arm reaches ``|g| <= 0.21`` (links of 0.1 and 0.11).  Goals are uniform over the
annulus ``0.05 <= |g| <= 0.20`` cut into 8 sectors of 45 degrees; ``"train"`` goals lie in the
sectors starting at 0, 90, 180 and 270 degrees, ``"test"`` goals in the other four (45, 135, 225,
315), ``"all"`` in the whole annulus.  ``set_task`` accepts any goal with ``|g| <= 0.21``.

Success (``success_threshold = 0.02``, both variants): the fingertip ends the episode less than
0.02 from the goal: about the size of the target and fingertip spheres of Reacher's model (radii
0.009 and 0.01), and under half the nearest goals' distance from the base (0.05).

``ReacherGoal4DEnv`` (id ``ReacherGoal4D-v0``) is the paper's lower-dimensional variant for
model-based RL (Appendix A): the same arm and tasks, observation ``(q1, q2, dq1, dq2, gx, gy)``
(joint angles in radians as MuJoCo integrates them, i.e. ``q1`` is not wrapped), action = the two
joint torques (in ``[-1, 1]``, scaled by the motors' gear of 200).  ``state_slice = slice(0, 4)``,
``goal_slice = slice(4, 6)``.

Rendering uses MuJoCo's OpenGL renderer; see :mod:`sb3_ml3.envs.rendering` for the headless
backend choice.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

from .tasks import (OUTSIDE_SPLIT, TASK_SPLITS, AnnulusSectors, GoalRegion, GoalTaskMixin, alternating_sectors,
                    outside_rings)

REACH = 0.21  # link0 (0.1) + fingertip offset on link1 (0.11)
GOAL_R_MIN, GOAL_R_MAX = 0.05, 0.20
N_SECTORS = 8
#: the "outside" split's rings: radii inside the splits' annulus (the elbow near its limit) and beyond it
OUTSIDE_RINGS = ((0.02, GOAL_R_MIN), (GOAL_R_MAX, REACH))


#: width of :func:`arm_frame_features`
ARM_FRAME_DIM = 7


def arm_frame_features(obs: Any) -> Any:
    """ReacherGoal-v0 observations ``(..., 10)`` in the upper arm's frame, ``(..., 7)``, each about unit spread.

    (cos, sin of the elbow; 5 |goal|; 0.2 x the two joint velocities; 10 x the fingertip-goal vector rotated
    into the upper arm's frame). The shoulder angle and the goal's bearing are gone: rotating the arm and the
    goal together about the base changes neither the dynamics nor the torques that reach the goal, so a
    function of these features (a learned target, an expert) is the same on every goal of a given radius,
    whatever its sector. Takes and returns a NumPy array or a torch tensor.
    """
    if obs.shape[-1] != 10:
        raise ValueError(f"arm_frame_features reads ReacherGoal-v0 observations of width 10, got {tuple(obs.shape)}.")
    numpy = isinstance(obs, np.ndarray)
    if not numpy:
        import torch
    c0, c1, s0, s1 = obs[..., 0], obs[..., 1], obs[..., 2], obs[..., 3]
    dx, dy = obs[..., 8], obs[..., 9]
    radius = np.linalg.norm(obs[..., 4:6], axis=-1) if numpy else torch.linalg.vector_norm(obs[..., 4:6], dim=-1)
    columns = [c1, s1, 5.0 * radius, 0.2 * obs[..., 6], 0.2 * obs[..., 7], 10.0 * (c0 * dx + s0 * dy),
               10.0 * (-s0 * dx + c0 * dy)]
    return np.stack(columns, -1) if numpy else torch.stack(columns, -1)


class ReacherGoalEnv(GoalTaskMixin, ReacherEnv):
    """MuJoCo 2-link reacher with goal tasks and the paper's reward; see the module docstring.

    Args:
        task_split: "train", "test" or "all" (alternating 45-degree sectors, see module docstring), or
            "outside": radii 0.02-0.05 and 0.20-0.21, outside both splits (a generalisation check).
        goal: pin this goal from the start (same as ``set_task(goal)``).
        render_mode: None, "rgb_array" (headless GL, see ``sb3_ml3.envs.rendering``), "human", ...
        **kwargs: passed to Reacher-v5's constructor (e.g. ``frame_skip``, ``width``, ``height``);
            its reward weights are unused since the reward is the paper's.
    """

    goal_dim = 2
    goal_slice = slice(4, 6)
    reach = REACH
    #: an episode succeeds when its final fingertip-goal distance is below this (module docstring)
    success_threshold = 0.02
    _obs_dim = 10
    #: the observation in the task's own frame (ML3's ``task_frame`` meta-input), from raw observations
    task_frame_features = staticmethod(arm_frame_features)
    task_frame_dim = ARM_FRAME_DIM

    def __init__(
        self, task_split: str = "train", goal: Any = None, render_mode: str | None = None, **kwargs: Any
    ) -> None:
        ReacherEnv.__init__(self, render_mode=render_mode, **kwargs)
        # EzPickle rebuilds the env from these on unpickling (set_task keeps "goal" current).
        utils.EzPickle.__init__(self, task_split=task_split, goal=goal, render_mode=render_mode, **kwargs)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(self._obs_dim,), dtype=np.float32)
        self._fingertip_id = self.model.body("fingertip").id
        self._init_tasks(task_split, goal)
        self._initial_distance = float("nan")

    task_splits = (*TASK_SPLITS, OUTSIDE_SPLIT)

    @classmethod
    def build_task_regions(cls) -> dict[str, GoalRegion]:
        return {
            "train": AnnulusSectors(GOAL_R_MIN, GOAL_R_MAX, alternating_sectors(N_SECTORS, 0)),
            "test": AnnulusSectors(GOAL_R_MIN, GOAL_R_MAX, alternating_sectors(N_SECTORS, 1)),
            "all": AnnulusSectors(GOAL_R_MIN, GOAL_R_MAX, [(0.0, 2 * np.pi)]),
            OUTSIDE_SPLIT: outside_rings(*OUTSIDE_RINGS),
        }

    def _check_goal_feasible(self, goal: np.ndarray) -> None:
        norm = float(np.linalg.norm(goal))
        if norm > REACH:
            raise ValueError(
                f"goal {goal.tolist()} is out of the ReacherGoal arm's reach: |goal| = {norm:.3f} > {REACH} "
                f"(the arm's length). Pick a goal with |goal| <= {REACH}; the splits use "
                f"{GOAL_R_MIN} <= |goal| <= {GOAL_R_MAX}."
            )

    # ---- simulation --------------------------------------------------------------
    def _fingertip(self) -> np.ndarray:
        return self.data.xpos[self._fingertip_id, :2]

    def _distance(self) -> float:
        tip, goal = self._fingertip(), self._goal
        return math.hypot(tip[0] - goal[0], tip[1] - goal[1])

    def reset_model(self) -> np.ndarray:
        goal = self._next_goal()
        qpos = self.init_qpos + self.np_random.uniform(low=-0.1, high=0.1, size=self.model.nq)
        qpos[-2:] = goal  # the target's slide joints: its world position equals qpos (ref = pos)
        qvel = self.init_qvel + self.np_random.uniform(low=-0.005, high=0.005, size=self.model.nv)
        qvel[-2:] = 0.0
        self.set_state(qpos, qvel)
        self._initial_distance = self._distance()
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return self._info(self._initial_distance)

    def _get_obs(self) -> np.ndarray:
        qpos, qvel = self.data.qpos, self.data.qvel
        fingertip = self._fingertip()
        return np.array(
            [
                np.cos(qpos[0]), np.cos(qpos[1]), np.sin(qpos[0]), np.sin(qpos[1]),
                qpos[2], qpos[3], qvel[0], qvel[1],
                fingertip[0] - qpos[2], fingertip[1] - qpos[3],
            ],
            dtype=np.float32,
        )

    def step(self, action):
        a = self._check_action(action)
        self.do_simulation(a, self.frame_skip)
        d = self._distance()
        reward_ctrl = -float(np.abs(a).sum())
        reward = -d + 1.0 / (d + 0.001) + reward_ctrl
        info = self._info(d)
        info["reward_dist"] = -d
        info["reward_near"] = 1.0 / (d + 0.001)
        info["reward_ctrl"] = reward_ctrl
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, info

    def _info(self, distance: float | None = None) -> dict[str, Any]:
        info = self._task_info()
        info["distance"] = self._distance() if distance is None else distance
        info["initial_distance"] = self._initial_distance
        info["fingertip"] = self._fingertip().copy()
        return info


class ReacherGoal4DEnv(ReacherGoalEnv):
    """The 4-D ReacherGoal of the paper's model-based experiments: obs ``(q1, q2, dq1, dq2, gx, gy)``."""

    state_dim = 4
    state_slice = slice(0, 4)
    goal_slice = slice(4, 6)
    _obs_dim = 6
    task_frame_features = None  # no arm-frame features for this observation (yet)
    task_frame_dim = None

    def _get_obs(self) -> np.ndarray:
        qpos, qvel = self.data.qpos, self.data.qvel
        return np.array([qpos[0], qpos[1], qvel[0], qvel[1], qpos[2], qpos[3]], dtype=np.float32)
