"""The ``task_frame`` meta-input: each sample's observation in the task's own frame, computed by the env.

Some task families have a symmetry the raw observation hides. On ReacherGoal, rotating the arm and the goal
together about the base is the same task, so a learned target that reads the goal's bearing has to learn
each sector of goals on its own and cannot reach a sector it never saw in meta-training; one that reads the
observation in the upper arm's frame is the same function on every sector. An env offers such features as
``task_frame_features(raw_obs) -> (..., task_frame_dim)`` (a function of the observation alone) and
``task_frame_dim`` on its unwrapped class (:func:`sb3_ml3.envs.reacher.arm_frame_features`).

The features read the **raw** observation: under ``VecNormalize`` the buffer holds normalised ones, whose
statistics move fastest during the first rollouts, exactly where a short learned pull acts. ML3 therefore
keeps the raw observation of the step SB3 is about to add (``VecNormalize.get_original_obs`` after each env
step, the observation itself without ``VecNormalize``) and stages its features in the buffer, as it stages
``task_reward``, with no ``collect_rollouts`` of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: the meta-input's name
TASK_FRAME = "task_frame"


def env_task_frame(env: Any, env_name: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """``(task_frame_features, task_frame_dim)`` of a VecEnv's envs, or a ValueError that says what to do."""
    try:
        features, dim = env.get_attr("task_frame_features")[0], env.get_attr("task_frame_dim")[0]
    except AttributeError:
        features, dim = None, None
    if features is None or not dim:
        raise ValueError(
            f"The meta-loss input 'task_frame' needs an env that defines task_frame_features(obs) and "
            f"task_frame_dim on its unwrapped class (ReacherGoal-v0 does: the arm's frame); {env_name} does not. "
            "Leave 'task_frame' out of meta_inputs for this env."
        )
    return features, int(dim)


def setup_task_frame(model: Any, env_name: str) -> TaskFrameStager | None:
    """Set ``model.task_frame_dim`` from its env (or keep the one a file recorded, without an env); the stager
    that feeds the buffer when the model reads ``task_frame`` and has an env to collect from, else None."""
    if TASK_FRAME not in model.meta_inputs:
        model.task_frame_dim = None
        return None
    if model.env is None:
        if not model.task_frame_dim:
            raise ValueError("The meta-loss input 'task_frame' needs an env, or a model file that recorded its width.")
        return None
    features, dim = env_task_frame(model.env, env_name)
    if model.task_frame_dim is not None and model.task_frame_dim != dim:
        raise ValueError(f"The meta-loss reads task_frame features of width {model.task_frame_dim}; {env_name} gives {dim}.")
    model.task_frame_dim = dim
    return TaskFrameStager(features)


class TaskFrameStager:
    """Stages each env step's task-frame features in the rollout buffer (see the module docstring)."""

    def __init__(self, features: Callable[[np.ndarray], np.ndarray]) -> None:
        self.features = features
        self._raw: np.ndarray | None = None  # the raw observation SB3 adds next (under VecNormalize)

    def start(self, model: Any) -> None:
        """At the start of ``learn``: the raw form of ``model._last_obs``, the first observation to be added."""
        vec_normalize = model.get_vec_normalize_env()
        if vec_normalize is None or model._last_obs is None:
            self._raw = None
            return
        raw = vec_normalize.get_original_obs()
        last = np.asarray(model._last_obs)
        if raw is None or np.shape(raw) != last.shape or not np.allclose(
                vec_normalize.normalize_obs(raw), last, atol=1e-4):
            # e.g. a model loaded with its last observation onto a fresh env: invert the normalisation
            raw = vec_normalize.unnormalize_obs(last)
        self._raw = np.array(raw, dtype=np.float64)

    def stage(self, model: Any) -> None:
        """After an env step, before SB3 adds it: the features of the observation being added."""
        vec_normalize = model.get_vec_normalize_env()
        raw = np.asarray(model._last_obs) if vec_normalize is None else self._raw
        if raw is None:
            raise RuntimeError("task_frame: no raw observation was recorded at the start of learn().")
        model.rollout_buffer.stage_task_frame(np.asarray(self.features(raw), dtype=np.float32))
        if vec_normalize is not None:  # the raw form of the step's new observation, added next
            self._raw = np.array(vec_normalize.get_original_obs(), dtype=np.float64)


__all__ = ["TASK_FRAME", "TaskFrameStager", "env_task_frame", "setup_task_frame"]
