"""What model-free ML3's meta-loss reads: input names, their widths, and the fields of a minibatch.

The paper's meta-loss reads (s, a, mu, sigma, g) (Sec. III.B.2); optional inputs add per-sample
quantities of the rollout. :class:`MetaInputs` maps names to widths for an env's spaces and builds
the named tensors a :class:`~sb3_ml3.MetaLoss` is called with, from a minibatch and the policy's
mean and std (the only inputs that depend on theta).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from sb3_ml3.meta_loss import InputSpec
from sb3_ml3.surrogates import POLICY_AGE_HALF, policy_age_feature

#: The meta-loss inputs of the paper (Sec. III.B.2 and its appendix notes on mean and std).
DEFAULT_META_INPUTS = ("obs", "action", "mean", "std", "goal")
#: Further per-sample inputs a meta-loss may read (each of width 1). ``advantage`` is the task loss's
#: weight (GAE advantage or centred return, normalised per rollout when ``normalize_advantage``);
#: ``old_log_prob`` is log pi_old(a|s) of the policy that collected the rollout (PPO's ratio denominator);
#: ``policy_age`` how many inner updates the policy has had since it was initialised (or last reset), the same
#: for every sample of a rollout: what lets a learned loss teach a new policy differently from a trained one;
#: ``task_frame`` the observation in the task's own frame, as wide as the env says (:mod:`sb3_ml3.ml3.task_frame`).
OPTIONAL_META_INPUTS = ("reward", "return", "advantage", "episode_start", "timestep", "old_log_prob", "policy_age",
                        "task_frame")
#: ``timestep`` enters the meta-loss as t / TIMESTEP_SCALE so that it stays O(1).
TIMESTEP_SCALE = 100.0
#: ``policy_age`` k enters as k / (k + POLICY_AGE_HALF) (0 for a new policy, 1/2 after this many updates, below 1);
#: defined beside the target correction (``policy_age_feature``), whose ``pull_updates`` reads it back
#: the minibatch key of each input that is read straight from the batch
_BATCH_KEYS = {"reward": "rewards", "return": "returns", "advantage": "task_weights", "episode_start": "episode_starts",
               "old_log_prob": "old_log_prob", "task_frame": "task_frames"}


def check_meta_inputs(names: Sequence[str]) -> None:
    """Refuse unknown, repeated or theta-blind input lists, saying which names are allowed."""
    known = DEFAULT_META_INPUTS + OPTIONAL_META_INPUTS
    unknown = [f for f in names if f not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"meta_inputs {tuple(names)} must be distinct names from {known}"
            + (f"; unknown: {unknown}" if unknown else "") + "."
        )
    if not any(f in names for f in ("mean", "std")):
        raise ValueError("meta_inputs must include 'mean' or 'std': the learned loss reaches theta through them.")


def env_goal_slice(env: Any, names: Sequence[str], observation_space: spaces.Space) -> slice | None:
    """Where a VecEnv's envs keep the goal in the observation (their ``goal_slice``), or None for an env without
    goals; a ValueError that says what to do when ``names`` read a goal the env does not have."""
    try:
        goal_slice = env.get_attr("goal_slice")[0]
    except AttributeError:
        goal_slice = None
    if goal_slice is None and "goal" in names:
        raise ValueError(
            "The meta-loss input 'goal' needs a goal-conditioned env whose unwrapped env has a 'goal_slice' "
            "attribute (where the goal lies in the observation), e.g. the sb3_ml3.envs environments. "
            "For an env without goals pass meta_inputs without 'goal', e.g. ('obs', 'action', 'mean', 'std')."
        )
    if goal_slice is not None and not isinstance(observation_space, spaces.Box):
        raise ValueError(f"ML3 reads the goal from a flat Box observation, got {observation_space}.")
    return goal_slice


class MetaInputs:
    """The meta-loss inputs ``names`` for an env's spaces, with the goal at ``goal_slice`` of the observation.

    ``obs`` is the observation without its goal; ``goal`` the goal; ``action``, ``mean``, ``std`` have the
    action's width; ``task_frame`` has ``task_frame_dim`` (the env's); every other optional input has width 1.
    """

    def __init__(self, names: Sequence[str], observation_space: spaces.Space, action_space: spaces.Space,
                 goal_slice: slice | None, device: torch.device | str = "cpu",
                 task_frame_dim: int | None = None) -> None:
        check_meta_inputs(names)
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"ML3 feeds flat Box observations to the meta-loss, got {observation_space}.")
        self.names = tuple(names)
        self.goal_slice = goal_slice
        obs_dim = int(observation_space.shape[0])
        columns = range(obs_dim)
        goal_columns = columns[goal_slice] if goal_slice is not None else range(0)
        action_dim = int(np.prod(action_space.shape))
        self.widths = {"obs": obs_dim - len(goal_columns), "action": action_dim, "mean": action_dim,
                       "std": action_dim, "goal": len(goal_columns)}
        if "task_frame" in self.names:
            if not task_frame_dim:
                raise ValueError("The meta-loss input 'task_frame' needs the env's task_frame_dim.")
            self.widths["task_frame"] = int(task_frame_dim)
        self.obs_columns: torch.Tensor | None = None  # the observation without its goal, for "obs"
        if goal_slice is not None:
            kept = [i for i in columns if i not in goal_columns]
            self.obs_columns = torch.tensor(kept, dtype=torch.long, device=device)

    @property
    def spec(self) -> InputSpec:
        """The input spec a meta-loss for this setting must have."""
        return InputSpec(tuple((name, self.widths.get(name, 1)) for name in self.names))

    def fields(self, batch: Mapping[str, torch.Tensor], mean: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named inputs for a minibatch (keys as :class:`~sb3_ml3.ml3.buffers.ML3RolloutBufferSamples`)."""
        obs = batch["observations"]
        fields: dict[str, torch.Tensor] = {}
        for name in self.names:
            if name == "obs":
                fields[name] = obs if self.obs_columns is None else obs[..., self.obs_columns]
            elif name == "goal":
                fields[name] = obs[..., self.goal_slice]
            elif name == "action":
                fields[name] = batch["actions"]
            elif name == "mean":
                fields[name] = mean
            elif name == "std":
                fields[name] = std
            elif name == "timestep":
                fields[name] = batch["timesteps"] / TIMESTEP_SCALE
            elif name == "policy_age":
                fields[name] = policy_age_feature(batch["policy_ages"])
            else:
                fields[name] = batch[_BATCH_KEYS[name]]
        return fields


__all__ = ["DEFAULT_META_INPUTS", "OPTIONAL_META_INPUTS", "POLICY_AGE_HALF", "TIMESTEP_SCALE", "MetaInputs", "check_meta_inputs",
           "env_goal_slice"]
