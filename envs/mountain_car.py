"""MountainCarGoal: the paper's continuous mountain car, an under-actuated car below a goal hill.

Constants (ML3, Sec. IV-C.3): mass ``m = 0.2``, gravity ``g = -9.8``, friction ``k = 0.3``,
``dt = 0.1``, force ``a`` in ``[-0.25, 0.25]``, position in ``[-1.2, 0.5]``, speed in
``[-1.5, 1.5]``, start at rest at ``x = -0.55`` (the bottom of the valley is ``-pi/6``).

Dynamics -- the hill ``h(x) ~ sin(3x)`` of the classic mountain car, in the form of the
"mountain car problem" formulation ``v' = v + dt (g m cos(3x) + F/m - k v)``; semi-implicit
Euler::

    a'  = clip(a, -0.25, 0.25)
    v'  = clip(v + dt * (g * m * cos(3 x) + a' / m - k * v), -1.5, 1.5)
    x'  = x + dt * v'
    at the left wall  (x' <= -1.2): x' = -1.2 and v' = max(v', 0)
    at the right end  (x' >=  0.5): x' =  0.5 and v' = min(v', 0)

With these constants the engine's acceleration (at most 1.25) is below the pull of gravity on the
steep part of the hill (up to 1.96): pushing towards the goal from the start stalls near
``x = -0.04`` and settles back to about ``-0.29``, so the car must first swing back to the left
to gather momentum -- greedy minimisation of the distance fails (the paper's point).  A policy that
pushes in the direction of its velocity reaches ``x = 0.5`` after about 40 steps and can hold any
position beyond ``x = 0.29``.  Episodes last 100 steps (the registered TimeLimit).

Reward ``r = -|x' - g|``; the task metric is the distance ``|x - g|`` at the last step
(``info["distance"]``).  Observation ``(x, v, g)`` as float32, ``goal_slice = slice(2, 3)``,
``state_slice = slice(0, 2)``.

Tasks: the paper's task is the single goal ``g = 0.5``, and ``MountainCarGoal-v0`` pins it by
default (``goal=0.5``).  Pass ``goal=None`` to draw goals from a split instead: ``"train"``
goals are uniform in ``[0.3, 0.4)``, ``"test"`` goals in ``[0.4, 0.5]`` (so 0.5 is a test goal);
all of them need the swing-back and all can be held once reached.  ``set_task`` accepts any goal
in the position range ``[-1.2, 0.5]``.

Success (``success_threshold = 0.05``): the car ends the episode less than 0.05 from the goal
position, half the width of the test goals' interval and 3% of the track's length.

:func:`torch_step` / :func:`torch_reward` implement the same equations on batched torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from .base import NumpyGoalEnv
from .rendering import Canvas
from .tasks import Interval

MASS = 0.2
GRAVITY = -9.8
FRICTION = 0.3
DT = 0.1
MAX_FORCE = 0.25
MIN_POSITION, MAX_POSITION = -1.2, 0.5
MAX_SPEED = 1.5
START_POSITION = -0.55
PAPER_GOAL = 0.5


def numpy_step(state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """One step for numpy arrays ``state (..., 2) = (x, v)``, ``action (..., 1)``."""
    state = np.asarray(state, dtype=np.float64)
    x, v = state[..., 0], state[..., 1]
    a = np.minimum(np.maximum(np.asarray(action, dtype=np.float64)[..., 0], -MAX_FORCE), MAX_FORCE)
    v = v + DT * (GRAVITY * MASS * np.cos(3.0 * x) + a / MASS - FRICTION * v)
    v = np.minimum(np.maximum(v, -MAX_SPEED), MAX_SPEED)
    x = x + DT * v
    at_left, at_right = x <= MIN_POSITION, x >= MAX_POSITION
    v = np.where(at_left, np.maximum(v, 0.0), np.where(at_right, np.minimum(v, 0.0), v))
    x = np.minimum(np.maximum(x, MIN_POSITION), MAX_POSITION)
    return np.stack((x, v), axis=-1)


def numpy_reward(next_state: np.ndarray, action: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """``-|x' - g|`` for numpy arrays; ``goal`` has shape ``(..., 1)`` (or broadcasts)."""
    return -np.abs(np.asarray(next_state)[..., 0] - np.asarray(goal)[..., 0])


def torch_step(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Batched, differentiable :func:`numpy_step`: ``state (..., 2)``, ``action (..., 1)`` -> ``(..., 2)``."""
    x, v = state[..., 0], state[..., 1]
    a = torch.clamp(action[..., 0], -MAX_FORCE, MAX_FORCE)
    v = torch.clamp(v + DT * (GRAVITY * MASS * torch.cos(3.0 * x) + a / MASS - FRICTION * v), -MAX_SPEED, MAX_SPEED)
    x = x + DT * v
    at_left, at_right = x <= MIN_POSITION, x >= MAX_POSITION
    v = torch.where(at_left, torch.clamp(v, min=0.0), torch.where(at_right, torch.clamp(v, max=0.0), v))
    x = torch.clamp(x, MIN_POSITION, MAX_POSITION)
    return torch.stack([x, v], dim=-1)


def torch_reward(next_state: torch.Tensor, action: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Batched, differentiable :func:`numpy_reward` -> shape ``(...)``."""
    return -(next_state[..., 0] - goal[..., 0]).abs()


class MountainCarGoalEnv(NumpyGoalEnv):
    """The paper's continuous mountain car with a goal position; see the module docstring.

    Args:
        task_split: "train" (goals in [0.3, 0.4)), "test" ([0.4, 0.5]) or "all"; used when no
            goal is pinned.
        goal: the pinned goal position; default 0.5, the paper's task. ``None`` draws goals
            from ``task_split`` on each reset.
        reset_noise_scale: start position uniform in ``-0.55 +- scale`` (default 0: always -0.55).
        render_mode: None or "rgb_array" (numpy drawing, no GL needed).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}
    goal_dim = 1
    goal_slice = slice(2, 3)
    #: an episode succeeds when its final distance to the goal is below this (module docstring)
    success_threshold = 0.05
    state_dim = 2
    state_slice = slice(0, 2)
    dt = DT
    mass, gravity, friction = MASS, GRAVITY, FRICTION

    torch_step = staticmethod(torch_step)
    torch_reward = staticmethod(torch_reward)
    numpy_step = staticmethod(numpy_step)
    numpy_reward = staticmethod(numpy_reward)

    def __init__(
        self,
        task_split: str = "train",
        goal: Any = PAPER_GOAL,
        reset_noise_scale: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(task_split, goal, reset_noise_scale, render_mode, state=np.array([START_POSITION, 0.0]))

    def _make_spaces(self) -> tuple[spaces.Box, spaces.Box]:
        action_space = spaces.Box(-MAX_FORCE, MAX_FORCE, shape=(1,), dtype=np.float32)
        observation_space = spaces.Box(
            np.array([MIN_POSITION, -MAX_SPEED, MIN_POSITION], dtype=np.float32),
            np.array([MAX_POSITION, MAX_SPEED, MAX_POSITION], dtype=np.float32),
            dtype=np.float32,
        )
        return action_space, observation_space

    @classmethod
    def build_task_regions(cls) -> dict[str, Interval]:
        return {
            "train": Interval(0.3, 0.4),
            "test": Interval(0.4, PAPER_GOAL, closed=True),
            "all": Interval(0.3, PAPER_GOAL, closed=True),
        }

    def _check_goal_feasible(self, goal: np.ndarray) -> None:
        if not MIN_POSITION <= goal[0] <= MAX_POSITION:
            raise ValueError(
                f"goal {goal[0]} is off MountainCarGoal's track [{MIN_POSITION}, {MAX_POSITION}]; "
                f"pick a position inside it (the paper's goal is {PAPER_GOAL})."
            )

    def _distance(self) -> float:
        return float(abs(self._state[0] - self._goal[0]))

    def _sample_start_state(self) -> np.ndarray:
        """At rest at ``START_POSITION``, plus uniform noise of ``reset_noise_scale`` if positive."""
        s = self.reset_noise_scale
        x0 = START_POSITION + (self.np_random.uniform(-s, s) if s > 0 else 0.0)
        return np.array([x0, 0.0])

    def step(self, action):
        a = self._check_action(action)
        self._state = numpy_step(self._state, a)
        info = self._info()
        return self._obs(), -info["distance"], False, False, info

    def _info(self, distance: float | None = None) -> dict[str, Any]:
        info = super()._info(distance)
        info["position"] = float(self._state[0])
        return info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        c = Canvas(256, (MIN_POSITION - 0.1, MAX_POSITION + 0.2), (-0.8, 1.2))

        def height(x):
            return 0.45 * np.sin(3.0 * np.asarray(x))

        xs = np.linspace(MIN_POSITION, MAX_POSITION, 200)
        X, Y = c.grid()
        on_track = (X >= MIN_POSITION) & (X <= MAX_POSITION)
        c.fill_where(on_track & (Y < height(np.clip(X, MIN_POSITION, MAX_POSITION))), (214, 204, 180))
        c.polyline(xs, height(xs), 0.02, (90, 80, 60))
        g = float(self._goal[0])
        c.polyline(np.array([g, g]), np.array([height(g), height(g) + 0.25]), 0.02, (60, 60, 60))
        c.disc((g + 0.04, height(g) + 0.22), 0.04, (220, 60, 60))
        x = float(self._state[0])
        c.disc((x, height(x) + 0.06), 0.06, (40, 90, 200))
        return c.image
