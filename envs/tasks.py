"""Task distributions and the goal/task-split logic shared by every goal env.

A *task* of a goal-conditioned env is its goal ``g`` (a position in the plane, or a
1-D position for MountainCar).  ML3 meta-trains its loss on tasks drawn from one
region of goal space (``task_split="train"``) and is judged on tasks from a disjoint
region it never saw (``task_split="test"``); ``"all"`` is the union.

This module holds

* :class:`GoalRegion` and its two shapes, :class:`AnnulusSectors` (goals in angular
  sectors of an annulus or on arcs of a circle) and :class:`Interval` (1-D goals);
* :class:`GoalTaskMixin`, the mixin every env in ``sb3_ml3.envs`` inherits: it validates
  the split name, draws a goal on each reset from the split with the env's
  ``np_random`` (unless a task is pinned with :meth:`GoalTaskMixin.set_task`), and
  exposes ``goal``, ``goal_dim``, ``goal_slice`` (where the goal sits in the flat
  observation) and ``sample_tasks(n, split, seed)``.

Sampling is deterministic: ``sample_tasks(n, split, seed)`` draws the goals one after the
other from ``np.random.default_rng(seed)``, so the same seed always gives the same goals
and the first ``k`` goals of a draw of ``n > k`` equal a draw of ``k``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

TASK_SPLITS: tuple[str, ...] = ("train", "test", "all")


#: the extra split of the envs whose goals have a radius: goals outside both splits' radii
OUTSIDE_SPLIT = "outside"


def check_split(split: Any, splits: Sequence[str] = TASK_SPLITS) -> str:
    """Return ``split`` if it is one of ``splits`` (an env's task splits), else raise a ValueError that says what
    to do."""
    if not isinstance(split, str) or split not in splits:
        extra = (f", {OUTSIDE_SPLIT!r} for goals outside both splits' radii (a generalisation check)"
                 if OUTSIDE_SPLIT in splits else "")
        raise ValueError(
            f"task_split must be one of {tuple(splits)!r}; got {split!r}. Use 'train' for the "
            f"meta-training tasks, 'test' for the held-out meta-test tasks, 'all' for both{extra}."
        )
    return split


# --------------------------------------------------------------------------- regions


class GoalRegion:
    """A set of goals one can sample from and test membership of."""

    goal_dim: int

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Draw one goal (float64 array of shape ``(goal_dim,)``) with ``rng``."""
        raise NotImplementedError

    def contains(self, goals: np.ndarray) -> np.ndarray:
        """Boolean mask: which rows of ``goals`` (shape ``(..., goal_dim)``) lie in the region."""
        raise NotImplementedError


class AnnulusSectors(GoalRegion):
    """Goals in angular sectors of the annulus ``r_min <= |g| <= r_max`` around ``center``.

    ``sectors`` are half-open angle intervals ``[a0, a1)`` in radians (any real numbers; they are
    taken modulo 2*pi).  A sector is chosen with probability proportional to its width, the angle
    uniformly inside it and the radius so that goals are uniform over the area (``r_min == r_max``
    gives goals on arcs of a circle).
    """

    goal_dim = 2

    def __init__(
        self,
        r_min: float,
        r_max: float,
        sectors: Sequence[tuple[float, float]],
        center: Sequence[float] = (0.0, 0.0),
    ) -> None:
        if not 0.0 <= r_min <= r_max:
            raise ValueError(f"need 0 <= r_min <= r_max; got r_min={r_min}, r_max={r_max}")
        if not sectors or any(a1 <= a0 or a1 - a0 > 2 * math.pi for a0, a1 in sectors):
            raise ValueError(f"sectors must be non-empty (a0, a1) pairs with a0 < a1 <= a0 + 2*pi; got {sectors}")
        self.r_min, self.r_max = float(r_min), float(r_max)
        self.sectors = tuple((float(a0), float(a1)) for a0, a1 in sectors)
        self.center = np.asarray(center, dtype=np.float64)
        widths = np.array([a1 - a0 for a0, a1 in self.sectors])
        self._cum = np.cumsum(widths / widths.sum())

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        u_sector, u_angle, u_radius = rng.random(3)
        i = 0
        if len(self.sectors) > 1:
            i = min(int(np.searchsorted(self._cum, u_sector, side="right")), len(self.sectors) - 1)
        a0, a1 = self.sectors[i]
        angle = a0 + u_angle * (a1 - a0)
        radius = math.sqrt(self.r_min**2 + u_radius * (self.r_max**2 - self.r_min**2))
        return self.center + radius * np.array([math.cos(angle), math.sin(angle)])

    def contains(self, goals: np.ndarray) -> np.ndarray:
        rel = np.asarray(goals, dtype=np.float64) - self.center
        radius = np.linalg.norm(rel, axis=-1)
        angle = np.arctan2(rel[..., 1], rel[..., 0])
        tol = 1e-9
        inside = (radius >= self.r_min - tol) & (radius <= self.r_max + tol)
        in_sector = np.zeros(radius.shape, dtype=bool)
        for a0, a1 in self.sectors:
            in_sector |= np.mod(angle - a0, 2 * math.pi) < (a1 - a0)
        return inside & in_sector

    def __repr__(self) -> str:
        deg = [(round(math.degrees(a0), 1), round(math.degrees(a1), 1)) for a0, a1 in self.sectors]
        return f"AnnulusSectors(r={self.r_min}..{self.r_max}, sectors_deg={deg}, center={self.center.tolist()})"


def alternating_sectors(n_sectors: int, parity: int, offset: float = 0.0) -> list[tuple[float, float]]:
    """Every other one of ``n_sectors`` equal sectors of the circle (``parity`` 0 or 1)."""
    width = 2 * math.pi / n_sectors
    return [(offset + i * width, offset + (i + 1) * width) for i in range(parity, n_sectors, 2)]


class Interval(GoalRegion):
    """1-D goals uniform in ``[low, high)`` (``[low, high]`` if ``closed``)."""

    goal_dim = 1

    def __init__(self, low: float, high: float, closed: bool = False) -> None:
        if not low < high:
            raise ValueError(f"need low < high; got [{low}, {high}]")
        self.low, self.high, self.closed = float(low), float(high), bool(closed)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([self.low + rng.random() * (self.high - self.low)])

    def contains(self, goals: np.ndarray) -> np.ndarray:
        g = np.asarray(goals, dtype=np.float64)[..., 0]
        return (g >= self.low) & ((g <= self.high) if self.closed else (g < self.high))

    def __repr__(self) -> str:
        return f"Interval([{self.low}, {self.high}{']' if self.closed else ')'})"


class Union(GoalRegion):
    """The union of regions (sampled region chosen with the given weights)."""

    def __init__(self, regions: Sequence[GoalRegion], weights: Sequence[float]) -> None:
        self.regions = tuple(regions)
        self.goal_dim = self.regions[0].goal_dim
        w = np.asarray(weights, dtype=np.float64)
        self._cum = np.cumsum(w / w.sum())

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        i = min(int(np.searchsorted(self._cum, rng.random(), side="right")), len(self.regions) - 1)
        return self.regions[i].sample(rng)

    def contains(self, goals: np.ndarray) -> np.ndarray:
        return np.any([r.contains(goals) for r in self.regions], axis=0)

    def __repr__(self) -> str:
        return f"Union({list(self.regions)!r})"


def sample_goals(region: GoalRegion, n: int, seed: int | np.random.Generator | None) -> np.ndarray:
    """``n`` goals from ``region``, one after the other, as a float64 array ``(n, goal_dim)``."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n (the number of tasks) must be a non-negative int; got {n!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = np.empty((int(n), region.goal_dim), dtype=np.float64)
    for i in range(int(n)):
        out[i] = region.sample(rng)
    return out


def outside_rings(inner: tuple[float, float], outer: tuple[float, float]) -> Union:
    """Goals outside an annulus' radii: the ring ``inner`` inside it and the ring ``outer`` beyond it, each drawn
    half of the time (so a draw of 2n goals holds about n of each, whatever the rings' areas)."""
    full = [(0.0, 2 * math.pi)]
    return Union([AnnulusSectors(*inner, full), AnnulusSectors(*outer, full)], [0.5, 0.5])


# --------------------------------------------------------------------------- the mixin


class _class_or_instance_method:
    """Descriptor: ``f(owner, ...)`` where owner is the instance if called on one, else the class.

    ``sample_tasks`` uses it so that ``env.unwrapped.sample_tasks(...)`` respects the env's own
    task options (e.g. AntGoal's ``goal_radius``) while ``AntGoalEnv.sample_tasks(...)`` uses the
    defaults, without two differently named functions.
    """

    def __init__(self, func):
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, objtype=None):
        owner = obj if obj is not None else objtype
        return functools.partial(self.func, owner)


class GoalTaskMixin:
    """Task-split and goal logic shared by the goal-conditioned envs.

    Subclasses define ``goal_dim``, ``goal_slice`` (where the goal lies in the flat
    observation), :meth:`build_task_regions` (a classmethod returning ``{"train": region,
    "test": region, "all": region}`` for the given task options) and :meth:`_check_goal_feasible`
    (raises ValueError for a goal the env cannot pose, e.g. out of the arm's reach), then call
    :meth:`_init_tasks` in ``__init__`` and :meth:`_next_goal` at the start of each reset.

    Public API (on ``env.unwrapped``):

    * ``task_split`` -- "train", "test" or "all" (ReacherGoal and PointmassGoal also have "outside": goals
      outside both splits' radii, for generalisation checks; ``task_splits`` lists an env's splits);
    * ``goal`` -- the current episode's goal (copy), ``goal_dim``, ``goal_slice``;
    * ``set_task(goal)`` -- pin a goal: it stays for every later reset until ``clear_task()``;
    * ``pinned_task`` -- the pinned goal or None;
    * ``sample_tasks(n, split="train", seed=None)`` -- ``n`` goals from a split, deterministic per
      seed (classmethod-like: on an instance it uses that instance's task options);
    * ``task_regions`` -- the :class:`GoalRegion` of each split.
    """

    goal_dim: int
    goal_slice: slice
    task_splits: tuple[str, ...] = TASK_SPLITS

    # ---- to be provided by the env -------------------------------------------------
    @classmethod
    def build_task_regions(cls, **task_kwargs: Any) -> dict[str, GoalRegion]:
        raise NotImplementedError

    def _check_goal_feasible(self, goal: np.ndarray) -> None:
        raise NotImplementedError

    # ---- set-up -------------------------------------------------------------------
    def _init_tasks(self, task_split: str, goal: Any = None, **task_kwargs: Any) -> None:
        self.task_split = check_split(task_split, type(self).task_splits)
        self.task_kwargs = dict(task_kwargs)
        self.task_regions = type(self).build_task_regions(**task_kwargs)
        self._pinned_goal: np.ndarray | None = None
        self._goal = self.task_regions[self.task_split].sample(np.random.default_rng(0))
        if goal is not None:
            self.set_task(goal)

    # ---- the task API -------------------------------------------------------------
    @property
    def goal(self) -> np.ndarray:
        """The goal of the current episode (a copy, float64, shape ``(goal_dim,)``)."""
        return self._goal.copy()

    @property
    def pinned_task(self) -> np.ndarray | None:
        """The goal pinned by :meth:`set_task`, or None when goals are drawn from the split."""
        return None if self._pinned_goal is None else self._pinned_goal.copy()

    def set_task(self, goal: Any) -> None:
        """Pin ``goal``: every later ``reset()`` uses it until :meth:`clear_task` is called.

        The current episode's goal changes on the next reset, not mid-episode.  Raises
        ValueError if ``goal`` has the wrong shape, is not finite, or is infeasible for this env.
        """
        g = self._as_goal(goal)
        self._check_goal_feasible(g)
        self._pinned_goal = g
        self._remember_for_pickle(g)

    def clear_task(self) -> None:
        """Unpin the task: later resets draw goals from ``task_split`` again."""
        self._pinned_goal = None
        self._remember_for_pickle(None)

    @_class_or_instance_method
    def sample_tasks(  # noqa: N805  (owner: the class or the instance, see _class_or_instance_method)
        owner, n: int, split: str = "train", seed: int | np.random.Generator | None = None, **task_kwargs: Any
    ) -> np.ndarray:
        """``n`` goals (float64, shape ``(n, goal_dim)``) drawn from ``split``, deterministic per ``seed``.

        Works on the class (``PointmassGoalEnv.sample_tasks(10, "test", seed=0)``, default task
        options, or those given as keywords) and on an instance (``env.unwrapped.sample_tasks(...)``,
        that env's task options).
        """
        check_split(split, owner.task_splits)
        if isinstance(owner, type):
            regions = owner.build_task_regions(**task_kwargs)
        elif task_kwargs:
            regions = type(owner).build_task_regions(**{**owner.task_kwargs, **task_kwargs})
        else:
            regions = owner.task_regions
        return sample_goals(regions[split], n, seed)

    # ---- helpers for the envs -----------------------------------------------------
    def _next_goal(self) -> np.ndarray:
        """Pick the goal of a new episode: the pinned task, else a draw from the split."""
        if self._pinned_goal is not None:
            self._goal = self._pinned_goal.copy()
        else:
            self._goal = self.task_regions[self.task_split].sample(self.np_random)
        return self._goal

    def _as_goal(self, goal: Any) -> np.ndarray:
        name = type(self).__name__
        try:
            g = np.array(goal, dtype=np.float64).reshape(-1) if np.ndim(goal) <= 1 else None
        except (TypeError, ValueError):
            g = None
        if g is None or g.shape != (self.goal_dim,):
            raise ValueError(
                f"{name}.set_task expects a goal of shape ({self.goal_dim},) (a position "
                f"{'on the track' if self.goal_dim == 1 else 'in the plane'}); got {goal!r}. "
                f"Draw valid goals with {name}.sample_tasks(n, split, seed)."
            )
        if not np.all(np.isfinite(g)):
            raise ValueError(f"{name}.set_task expects a finite goal; got {g.tolist()}.")
        return g

    def _check_action(self, action: Any) -> np.ndarray:
        """The action as float64 of the action space's shape, clipped to its bounds (else ValueError)."""
        space = self.action_space
        a = np.asarray(action, dtype=np.float64)
        if a.shape != space.shape:
            if a.shape == () and space.shape == (1,):
                a = a.reshape(1)
            else:
                raise ValueError(
                    f"{type(self).__name__}.step expects one action of shape {space.shape} "
                    f"(bounds {space.low.tolist()} .. {space.high.tolist()}); got shape {a.shape}. "
                    "Pass a single action per step; to step many envs at once use a vector env."
                )
        return np.minimum(np.maximum(a, space.low), space.high)

    def _remember_for_pickle(self, goal: np.ndarray | None) -> None:
        # MuJoCo envs pickle through gymnasium's EzPickle, which rebuilds the env from its
        # constructor arguments: keep the pinned task among them so that it survives.
        kwargs = getattr(self, "_ezpickle_kwargs", None)
        if isinstance(kwargs, dict):
            kwargs["goal"] = None if goal is None else goal.tolist()

    def _task_info(self) -> dict[str, Any]:
        return {"goal": self._goal.copy(), "task_split": self.task_split, "task_pinned": self._pinned_goal is not None}
