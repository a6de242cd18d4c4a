"""The base class of the goal envs that simulate an explicit state vector with numpy.

PointmassGoal and MountainCarGoal are not MuJoCo envs: their whole physical state is a small
float64 vector ``_state`` that a numpy function advances (the same equations as the env's
``torch_step``, which model-based ML3 differentiates through).  Everything around that vector is
the same for both, and lives here in :class:`NumpyGoalEnv`:

* the ``render_mode`` check (they draw with numpy, so only ``"rgb_array"`` is offered);
* ``reset_noise_scale`` and the ``state`` property (a copy of ``_state``);
* the observation: the state, then the goal, as float32 (so ``state_slice`` comes first and
  ``goal_slice`` right after it);
* the reset sequence -- seed ``np_random``, pick the goal (:meth:`GoalTaskMixin._next_goal`), draw
  the start state, remember the initial distance -- in that order, so the draws from
  ``np_random`` (goal first, then the start noise) are the same in every subclass;
* the ``distance`` / ``initial_distance`` entries that every ``info`` carries.

A subclass provides what differs: the state before the first reset (passed to ``__init__``),
:meth:`~NumpyGoalEnv._make_spaces`, :meth:`~NumpyGoalEnv._sample_start_state`,
:meth:`~NumpyGoalEnv._distance`, ``step``, ``render``, ``build_task_regions`` and
``_check_goal_feasible``, and the class attributes ``metadata``, ``goal_dim``, ``goal_slice``,
``state_dim`` and ``state_slice``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .tasks import GoalTaskMixin


class NumpyGoalEnv(GoalTaskMixin, gym.Env):
    """A goal env whose physical state is a numpy vector; the observation is ``(state, goal)``.

    Args:
        task_split: "train", "test" or "all" (see :class:`~.tasks.GoalTaskMixin`).
        goal: pin this goal from the start (same as calling ``set_task(goal)``).
        reset_noise_scale: how far each reset's start state is randomised (the subclass's
            :meth:`_sample_start_state` says how it is used).
        render_mode: None or one of ``metadata["render_modes"]``.
        state: the physical state before the first reset (float64, shape ``(state_dim,)``); the
            initial distance is measured from it, so ``info`` is defined even before a reset.
    """

    metadata: dict[str, Any]  # the subclass's, with "render_modes" (checked in __init__)
    state_dim: int
    state_slice: slice

    def __init__(
        self, task_split: str, goal: Any, reset_noise_scale: float, render_mode: str | None, state: np.ndarray
    ) -> None:
        modes = self.metadata["render_modes"]
        if render_mode is not None and render_mode not in modes:
            allowed = " or ".join(repr(m) for m in modes)
            raise ValueError(f"render_mode must be None or {allowed}; got {render_mode!r}")
        self.render_mode = render_mode
        self.reset_noise_scale = float(reset_noise_scale)
        self.action_space, self.observation_space = self._make_spaces()
        self._state = state
        self._init_tasks(task_split, goal)
        self._initial_distance = self._distance()

    # ---- to be provided by the env -------------------------------------------------
    def _make_spaces(self) -> tuple[spaces.Box, spaces.Box]:
        """The env's ``(action_space, observation_space)``, new objects for each env (own RNGs)."""
        raise NotImplementedError

    def _sample_start_state(self) -> np.ndarray:
        """A new episode's start state (float64), drawn with ``self.np_random`` after the goal."""
        raise NotImplementedError

    def _distance(self) -> float:
        """The task metric's distance between the current state and the goal."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------
    @property
    def state(self) -> np.ndarray:
        """The physical state (the observation's ``state_slice``) as float64 (a copy)."""
        return self._state.copy()

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._state, self._goal]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: new goal (pinned or drawn), then a new start state, in that order."""
        super().reset(seed=seed)
        self._next_goal()
        self._state = self._sample_start_state()
        self._initial_distance = self._distance()
        return self._obs(), self._info()

    def _info(self, distance: float | None = None) -> dict[str, Any]:
        """The task's info plus ``distance`` (computed unless given) and ``initial_distance``."""
        info = self._task_info()
        info["distance"] = self._distance() if distance is None else distance
        info["initial_distance"] = self._initial_distance
        return info
