"""What ML3 refuses before it trains: settings that cannot work and spaces it cannot read.

Each error says what was given and what to pass instead; the constructor and ``ML3.load`` run the
same checks, so a file cannot smuggle in a setting the constructor would refuse.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from gymnasium import spaces

from sb3_ml3.functional import INNER_OPTIMIZERS
from sb3_ml3.ml3.meta_inputs import check_meta_inputs
from sb3_ml3.ml3.task_losses import TASK_OBJECTIVES

if TYPE_CHECKING:
    from sb3_ml3.ml3.ml3 import ML3

#: how the REINFORCE weights are computed: the GAE advantage or the centred discounted return
TASK_LOSSES = ("advantage", "return")


class UntrainedMetaLossWarning(UserWarning):
    """ML3 is about to train a policy with a meta-loss nobody trained."""


def refuse_dict_observations(env: Any) -> None:
    """ML3's own message for a Dict observation space (SB3's points to ``MultiInputPolicy``, which ML3 lacks)."""
    space = env if isinstance(env, spaces.Space) else getattr(env, "observation_space", None)
    if isinstance(space, spaces.Dict):
        raise ValueError(
            f"ML3 reads flat Box observations (its meta-loss sees the state and the goal as vectors), got a Dict "
            f"space with keys {list(space.spaces)}. Flatten it first, e.g. gymnasium.wrappers.FlattenObservation "
            "(for goal envs, put the goal last and give the env a goal_slice)."
        )


def made_space(env: Any) -> spaces.Space | None:
    """The observation space of an env id (made and closed), for :func:`refuse_dict_observations`."""
    import gymnasium as gym

    made = gym.make(env) if isinstance(env, str) else None
    if made is None:
        return None
    try:
        return made.observation_space
    finally:
        made.close()


def check_arguments(model: "ML3") -> None:
    """Refuse settings that cannot work, saying what to pass instead (run by the constructor and by load)."""
    check_meta_inputs(model.meta_inputs)
    if model.inner_optimizer not in INNER_OPTIMIZERS:
        raise ValueError(f"inner_optimizer must be one of {sorted(INNER_OPTIMIZERS)}, got {model.inner_optimizer!r}.")
    if model.task_loss not in TASK_LOSSES:
        raise ValueError(f"task_loss must be one of {TASK_LOSSES}, got {model.task_loss!r}.")
    if model.task_reward is not None and (not isinstance(model.task_reward, str) or not model.task_reward):
        raise ValueError(f"task_reward must be None or the name of an info key, got {model.task_reward!r}.")
    if model.task_critic and model.task_reward is None:
        raise ValueError("task_critic=True learns the value of task_reward: pass task_reward (an info key) too.")
    if model.task_objective not in TASK_OBJECTIVES:
        raise ValueError(f"task_objective must be one of {TASK_OBJECTIVES}, got {model.task_objective!r}.")
    if model.task_objective == "q_value" and not model.task_critic:
        raise ValueError(
            "task_objective='q_value' fits Q_task to the task critic's lambda-returns: pass task_critic=True "
            "and task_reward (an info key) too."
        )
    if model.task_objective != "reinforce" and model.task_clip_range is not None:
        raise ValueError(
            f"task_clip_range clips REINFORCE's likelihood ratio; task_objective={model.task_objective!r} has none."
        )
    if (model.task_objective == "imitation") != (model.expert is not None):
        raise ValueError(
            "task_objective='imitation' and expert go together: pass the expert to imitate (an SB3 model, "
            f"policy or saved PPO path) with it, and no expert otherwise (task_objective={model.task_objective!r})."
        )
    if model.task_critic_epochs is not None and model.task_critic_epochs < 1:
        raise ValueError(f"task_critic_epochs must be None or >= 1, got {model.task_critic_epochs}.")
    if model.meta_epochs < 1:
        raise ValueError(f"meta_epochs must be >= 1, got {model.meta_epochs}.")
    if model.task_clip_range is not None and not model.task_clip_range > 0:
        raise ValueError(f"task_clip_range must be None or > 0, got {model.task_clip_range}.")
    if model.meta_epochs > 1 and model.task_clip_range is None and model.task_objective == "reinforce":
        raise ValueError(
            f"meta_epochs={model.meta_epochs} reuses each rollout for several outer steps: pass task_clip_range "
            "(e.g. 0.2) so the task loss is the importance-weighted, clipped surrogate."
        )
    if model.normalize_advantage not in (True, False, "rollout", "minibatch"):
        raise ValueError(f"normalize_advantage must be True, False, 'rollout' or 'minibatch', got {model.normalize_advantage!r}.")
    if model.vf_coef is not None and not (isinstance(model.vf_coef, (int, float)) and model.vf_coef > 0):
        raise ValueError(f"vf_coef must be None (a separate critic fit) or a positive number (PPO's joint update), "
                         f"got {model.vf_coef!r}.")
    if model.compile_inner_step not in (True, False, "auto"):
        raise ValueError(f"compile_inner_step must be True, False or 'auto', got {model.compile_inner_step!r}.")
    if model.batch_size < 1 or model.n_epochs < 1:
        raise ValueError(f"batch_size and n_epochs must be positive, got {model.batch_size} and {model.n_epochs}.")
    if model.max_policy_updates is not None and model.max_policy_updates < 0:
        raise ValueError(f"max_policy_updates must be None or >= 0, got {model.max_policy_updates}.")
    if model.policy_reset_interval is not None and model.policy_reset_interval < 1:
        raise ValueError(f"policy_reset_interval must be None or >= 1, got {model.policy_reset_interval}.")
    if model.env is not None:
        buffer_size = model.n_steps * model.env.num_envs
        if model.batch_size > buffer_size:
            raise ValueError(
                f"batch_size ({model.batch_size}) exceeds the rollout size n_steps * n_envs = {buffer_size}."
            )
        if buffer_size % model.batch_size:
            warnings.warn(
                f"The rollout size {buffer_size} is not a multiple of batch_size {model.batch_size}: "
                "the last, smaller minibatch of each epoch is dropped.",
                stacklevel=4,
            )


__all__ = ["TASK_LOSSES", "UntrainedMetaLossWarning", "check_arguments", "made_space", "refuse_dict_observations"]
