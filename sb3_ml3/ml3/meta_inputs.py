"""What model-free ML3's meta-loss reads: input names, their widths, and the fields of a minibatch.

The paper's meta-loss reads (s, a, mu, sigma, g) (Sec. III.B.2); optional inputs add per-sample
quantities of the rollout. :class:`MetaInputs` maps names to widths for an env's spaces and builds
the named tensors a :class:`~sb3_ml3.MetaLoss` is called with, from a minibatch and the policy's
mean and std (the only inputs that depend on theta).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
#: for every sample of a rollout: what lets a learned loss teach a new policy differently from a trained one.
OPTIONAL_META_INPUTS = ("reward", "return", "advantage", "episode_start", "timestep", "old_log_prob", "policy_age")
#: ``timestep`` enters the meta-loss as t / TIMESTEP_SCALE so that it stays O(1).
TIMESTEP_SCALE = 100.0
#: ``policy_age`` k enters as k / (k + POLICY_AGE_HALF) (0 for a new policy, 1/2 after this many updates, below 1);
#: defined beside the target correction (``policy_age_feature``), whose ``pull_updates`` reads it back
#: the minibatch key each width-1 input reads
_BATCH_KEYS = {"reward": "rewards", "return": "returns", "advantage": "task_weights", "episode_start": "episode_starts",
               "old_log_prob": "old_log_prob"}


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


class MetaInputs:
    """The meta-loss inputs ``names`` for an env's spaces, with the goal at ``goal_slice`` of the observation.

    ``obs`` is the observation without its goal; ``goal`` the goal; ``action``, ``mean``, ``std`` have the
    action's width; every optional input has width 1.
    """

    def __init__(self, names: Sequence[str], observation_space: spaces.Space, action_space: spaces.Space,
                 goal_slice: slice | None, device: torch.device | str = "cpu") -> None:
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


__all__ = ["DEFAULT_META_INPUTS", "OPTIONAL_META_INPUTS", "POLICY_AGE_HALF", "TIMESTEP_SCALE", "MetaInputs", "check_meta_inputs"]
