"""PointmassGoal: a 2-D point mass that has to reach a goal in the plane (ML3, Sec. IV-A).

State ``s = (x, y, vx, vy)``, action ``a = (ax, ay)``: accelerations in ``[-1, 1]``.  Dynamics
(semi-implicit Euler, ``dt = 0.1``), with ``clip`` the elementwise clamp::

    a'  = clip(a, -1, 1)
    v'  = clip(v + dt * a', -max_speed, max_speed)
    p'  = p + dt * v'
    hit = |p'| > arena                      (per axis: the point hits a wall)
    p'  = clip(p', -arena, arena);  v'[hit] = 0

Reward (on the state after the step): ``r = -|p' - g| - ctrl_cost_weight * |a'|^2`` with
``ctrl_cost_weight = 0.01`` by default (0 gives the feasibility study's plain ``-distance``).
Episodes last 50 steps (the registered TimeLimit); they never terminate early.

Observation ``(x, y, vx, vy, gx, gy)`` as float32; the goal is at ``goal_slice = slice(4, 6)``
and the physical state at ``state_slice = slice(0, 4)``.  Each reset starts at rest near the
origin (uniform noise of ``reset_noise_scale = 0.05``).

Tasks: goals uniform over the annulus ``0.5 <= |g| <= 2.0``; ``"train"`` goals lie in the right
half-plane (x > 0), ``"test"`` goals in the left (x < 0), as in the paper's Fig. 3(a).
``set_task`` accepts any goal inside the arena ``[-2.5, 2.5]^2``.

Success (``success_threshold = 0.1``): the point ends the episode less than 0.1 from the goal, a
fifth of the nearest goals' distance from the start (0.5) and half the distance it covers in one
step at top speed (0.2).

:func:`torch_step` / :func:`torch_reward` are the same equations for batched torch tensors
(any leading shape, any float dtype), differentiable almost everywhere, for model-based ML3;
:func:`numpy_step` / :func:`numpy_reward` are what the env itself runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from .base import NumpyGoalEnv
from .rendering import Canvas
from .tasks import OUTSIDE_SPLIT, TASK_SPLITS, AnnulusSectors, GoalRegion, outside_rings

DT = 0.1
MAX_ACCEL = 1.0
MAX_SPEED = 2.0
ARENA = 2.5  # half-width of the square arena
GOAL_R_MIN, GOAL_R_MAX = 0.5, 2.0
#: the "outside" split's rings: radii inside the splits' annulus and beyond it (inside the arena)
OUTSIDE_RINGS = ((0.1, GOAL_R_MIN), (GOAL_R_MAX, 2.4))
CTRL_COST_WEIGHT = 0.01


def numpy_step(
    state: np.ndarray, action: np.ndarray, dt: float = DT, max_speed: float = MAX_SPEED, arena: float = ARENA
) -> np.ndarray:
    """One step of the point mass for numpy arrays ``state (..., 4)``, ``action (..., 2)``."""
    # np.minimum/np.maximum instead of np.clip: same result, a fraction of the call overhead
    state = np.asarray(state, dtype=np.float64)
    a = np.minimum(np.maximum(np.asarray(action, dtype=np.float64), -MAX_ACCEL), MAX_ACCEL)
    v = np.minimum(np.maximum(state[..., 2:4] + dt * a, -max_speed), max_speed)
    p = state[..., 0:2] + dt * v
    hit = np.abs(p) > arena
    p = np.minimum(np.maximum(p, -arena), arena)
    v = np.where(hit, 0.0, v)
    return np.concatenate((p, v), axis=-1)


def numpy_reward(
    next_state: np.ndarray, action: np.ndarray, goal: np.ndarray, ctrl_cost_weight: float = CTRL_COST_WEIGHT
) -> np.ndarray:
    """``-|p' - g| - ctrl_cost_weight * |clip(a)|^2`` for numpy arrays (batched over leading dims)."""
    a = np.minimum(np.maximum(np.asarray(action, dtype=np.float64), -MAX_ACCEL), MAX_ACCEL)
    diff = np.asarray(next_state)[..., 0:2] - np.asarray(goal)
    return -np.sqrt(np.sum(diff * diff, axis=-1)) - ctrl_cost_weight * np.sum(a * a, axis=-1)


def torch_step(
    state: torch.Tensor, action: torch.Tensor, dt: float = DT, max_speed: float = MAX_SPEED, arena: float = ARENA
) -> torch.Tensor:
    """Batched, differentiable :func:`numpy_step`: ``state (..., 4)``, ``action (..., 2)`` -> ``(..., 4)``."""
    a = torch.clamp(action, -MAX_ACCEL, MAX_ACCEL)
    v = torch.clamp(state[..., 2:4] + dt * a, -max_speed, max_speed)
    p = state[..., 0:2] + dt * v
    hit = p.abs() > arena
    p = torch.clamp(p, -arena, arena)
    v = torch.where(hit, torch.zeros_like(v), v)
    return torch.cat([p, v], dim=-1)


def torch_reward(
    next_state: torch.Tensor, action: torch.Tensor, goal: torch.Tensor, ctrl_cost_weight: float = CTRL_COST_WEIGHT
) -> torch.Tensor:
    """Batched, differentiable :func:`numpy_reward` -> shape ``(...)``."""
    a = torch.clamp(action, -MAX_ACCEL, MAX_ACCEL)
    dist = torch.linalg.vector_norm(next_state[..., 0:2] - goal, dim=-1)
    return -dist - ctrl_cost_weight * (a * a).sum(dim=-1)


class PointmassGoalEnv(NumpyGoalEnv):
    """2-D point mass reaching a goal; see the module docstring for dynamics, reward and tasks.

    Args:
        task_split: "train" (goals with x > 0), "test" (x < 0) or "all", or "outside": radii 0.1-0.5 and
            2.0-2.4, outside both splits (a generalisation check).
        goal: pin this goal from the start (same as calling ``set_task(goal)``).
        ctrl_cost_weight: weight of the squared-action cost in the reward.
        reset_noise_scale: initial position uniform in ``[-scale, scale]^2``.
        render_mode: None or "rgb_array" (numpy drawing, no GL needed).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}
    goal_dim = 2
    goal_slice = slice(4, 6)
    state_dim = 4
    state_slice = slice(0, 4)
    dt = DT
    arena = ARENA
    #: an episode succeeds when its final distance to the goal is below this (module docstring)
    success_threshold = 0.1
    max_speed = MAX_SPEED

    # the differentiable dynamics, also reachable from the env
    torch_step = staticmethod(torch_step)
    torch_reward = staticmethod(torch_reward)
    numpy_step = staticmethod(numpy_step)
    numpy_reward = staticmethod(numpy_reward)

    def __init__(
        self,
        task_split: str = "train",
        goal: Any = None,
        ctrl_cost_weight: float = CTRL_COST_WEIGHT,
        reset_noise_scale: float = 0.05,
        render_mode: str | None = None,
    ) -> None:
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        super().__init__(task_split, goal, reset_noise_scale, render_mode, state=np.zeros(4))

    def _make_spaces(self) -> tuple[spaces.Box, spaces.Box]:
        high = np.array([ARENA, ARENA, MAX_SPEED, MAX_SPEED, ARENA, ARENA], dtype=np.float32)
        action_space = spaces.Box(-MAX_ACCEL, MAX_ACCEL, shape=(2,), dtype=np.float32)
        return action_space, spaces.Box(-high, high, dtype=np.float32)

    task_splits = (*TASK_SPLITS, OUTSIDE_SPLIT)

    @classmethod
    def build_task_regions(cls) -> dict[str, GoalRegion]:
        half = math.pi / 2
        return {
            "train": AnnulusSectors(GOAL_R_MIN, GOAL_R_MAX, [(-half, half)]),
            "test": AnnulusSectors(GOAL_R_MIN, GOAL_R_MAX, [(half, 3 * half)]),
            "all": AnnulusSectors(GOAL_R_MIN, GOAL_R_MAX, [(-math.pi, math.pi)]),
            OUTSIDE_SPLIT: outside_rings(*OUTSIDE_RINGS),
        }

    def _check_goal_feasible(self, goal: np.ndarray) -> None:
        if np.any(np.abs(goal) > ARENA):
            raise ValueError(
                f"goal {goal.tolist()} is outside PointmassGoal's arena [-{ARENA}, {ARENA}]^2; "
                f"pick a goal inside it (the splits draw goals with {GOAL_R_MIN} <= |g| <= {GOAL_R_MAX})."
            )

    def _distance(self) -> float:
        return math.hypot(self._state[0] - self._goal[0], self._state[1] - self._goal[1])

    def _sample_start_state(self) -> np.ndarray:
        """At rest, the position uniform in ``[-reset_noise_scale, reset_noise_scale]^2``."""
        s = self.reset_noise_scale
        return np.array([*self.np_random.uniform(-s, s, size=2), 0.0, 0.0])

    def step(self, action):
        a = self._check_action(action)
        self._state = numpy_step(self._state, a)
        # numpy_reward, unrolled for one 2-vector (a third of the time per step)
        d = self._distance()
        ctrl = self.ctrl_cost_weight * float(a[0] * a[0] + a[1] * a[1])
        info = self._info(d)
        info["reward_dist"] = -d
        info["reward_ctrl"] = -ctrl
        return self._obs(), -d - ctrl, False, False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        lim = (-ARENA, ARENA)
        c = Canvas(256, lim, lim)
        X, Y = c.grid()
        R = np.hypot(X, Y)
        # the goal annulus: test half (x < 0) tinted blue, train half (x > 0) tinted green
        ring = (R >= GOAL_R_MIN) & (R <= GOAL_R_MAX)
        c.fill_where(ring & (X < 0), (226, 232, 248))
        c.fill_where(ring & (X >= 0), (228, 244, 228))
        c.disc(self._goal, 0.15, (220, 60, 60))
        c.disc(self._state[:2], 0.11, (40, 90, 200))
        return c.image
