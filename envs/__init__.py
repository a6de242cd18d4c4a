"""Goal-conditioned Gymnasium environments of the ML3 paper (installed as ``sb3_ml3.envs``).

Importing this package (``import sb3_ml3`` does) registers with Gymnasium:

=====================  ==========================================  ===========  =============
id                     class                                       obs (float32) max steps
=====================  ==========================================  ===========  =============
``PointmassGoal-v0``   :class:`~.pointmass.PointmassGoalEnv`       6            50
``ReacherGoal-v0``     :class:`~.reacher.ReacherGoalEnv`           10           50
``ReacherGoal4D-v0``   :class:`~.reacher.ReacherGoal4DEnv`         6            50
``AntGoal-v0``         :class:`~.ant.AntGoalEnv`                   31           200
``MountainCarGoal-v0`` :class:`~.mountain_car.MountainCarGoalEnv`  3            100
=====================  ==========================================  ===========  =============

Every env takes ``task_split`` ("train", "test", "all") and ``goal`` (pin a task) keyword
arguments, and offers on ``env.unwrapped``: ``goal``, ``goal_dim``, ``goal_slice``,
``set_task(goal)``, ``clear_task()``, ``sample_tasks(n, split, seed)`` and ``task_regions``; the
goal and distance are in every ``info``.  :func:`sample_tasks` draws tasks by env id.

Registration is idempotent: ids already in Gymnasium's registry are left alone.  Importing also
chooses a headless MuJoCo GL backend when none is configured, see :mod:`.rendering`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .rendering import configure_headless_gl

configure_headless_gl()

from .ant import AntGoalEnv  # noqa: E402
from .base import NumpyGoalEnv  # noqa: E402
from .mountain_car import MountainCarGoalEnv  # noqa: E402
from .pointmass import PointmassGoalEnv  # noqa: E402
from .reacher import ReacherGoal4DEnv, ReacherGoalEnv  # noqa: E402
from .tasks import TASK_SPLITS, AnnulusSectors, GoalRegion, GoalTaskMixin, Interval  # noqa: E402

#: id -> (entry point, max_episode_steps)
ENV_SPECS: dict[str, tuple[str, int]] = {
    "PointmassGoal-v0": ("sb3_ml3.envs.pointmass:PointmassGoalEnv", 50),
    "ReacherGoal-v0": ("sb3_ml3.envs.reacher:ReacherGoalEnv", 50),
    "ReacherGoal4D-v0": ("sb3_ml3.envs.reacher:ReacherGoal4DEnv", 50),
    "AntGoal-v0": ("sb3_ml3.envs.ant:AntGoalEnv", 200),
    "MountainCarGoal-v0": ("sb3_ml3.envs.mountain_car:MountainCarGoalEnv", 100),
}
ENV_IDS: tuple[str, ...] = tuple(ENV_SPECS)


def register_envs() -> None:
    """Register every id of :data:`ENV_SPECS` with Gymnasium, skipping ids already registered."""
    for env_id, (entry_point, max_steps) in ENV_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)


def env_class(env_id: str) -> type:
    """The env class behind a registered id (Gymnasium's error for unknown ids)."""
    entry_point = gym.spec(env_id).entry_point
    if not isinstance(entry_point, str):
        return entry_point
    module, _, name = entry_point.partition(":")
    import importlib

    return getattr(importlib.import_module(module), name)


def sample_tasks(env_id: str, n: int, split: str = "train", seed: int | None = None, **task_kwargs: Any) -> np.ndarray:
    """``n`` goals of a registered env from ``split``, deterministic per ``seed``: shape ``(n, goal_dim)``.

    ``task_kwargs`` are the env's task options (e.g. ``goal_radius=3.0`` for AntGoal-v0).
    """
    return env_class(env_id).sample_tasks(n, split, seed, **task_kwargs)


register_envs()

__all__ = [
    "ENV_IDS",
    "ENV_SPECS",
    "TASK_SPLITS",
    "AntGoalEnv",
    "AnnulusSectors",
    "GoalRegion",
    "GoalTaskMixin",
    "Interval",
    "MountainCarGoalEnv",
    "NumpyGoalEnv",
    "PointmassGoalEnv",
    "ReacherGoal4DEnv",
    "ReacherGoalEnv",
    "configure_headless_gl",
    "env_class",
    "register_envs",
    "sample_tasks",
]
