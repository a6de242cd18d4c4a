"""A meta-loss and the setting it meets: building it for a model, its file's metadata, its normalisation.

A meta-loss file records what the loss was meta-trained with (inputs, env id, inner step, task loss,
observation normalisation). Building a model's loss checks the file against the model's setting and
says what differs; saving writes those facts; a loss meta-trained on normalised observations gets the
statistics it saw.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from sb3_ml3.meta_loss import InputSpec, MetaLoss, MetaLossSpecError
from sb3_ml3.ml3.checks import UntrainedMetaLossWarning
from sb3_ml3.ml3.meta_inputs import DEFAULT_META_INPUTS
from sb3_ml3.zoo import available_losses, zoo_loss_path

if TYPE_CHECKING:
    from sb3_ml3.ml3.ml3 import ML3


#: ML3's arguments that a meta-loss file decides when they are left at ``None`` (``"auto"`` for
#: ``max_grad_norm``, whose ``None`` means no clipping): argument -> (metadata key, default without a file).
#: A learned loss is meta-trained for one inner update; meta-testing it with another is extrapolating.
LOSS_SETTINGS: dict[str, tuple[str, Any]] = {
    "learning_rate": ("inner_lr", 3e-2),
    "n_steps": ("n_steps", 128),
    "batch_size": ("batch_size", 128),
    "n_epochs": ("n_epochs", 1),
    "gamma": ("gamma", 0.99),
    "gae_lambda": ("gae_lambda", 0.95),
    "meta_inputs": ("meta_inputs", DEFAULT_META_INPUTS),
    "inner_optimizer": ("inner_optimizer", "sgd"),
    "max_grad_norm": ("max_grad_norm", 1.0),
    "task_loss": ("task_loss", "advantage"),
    "vf_coef": ("vf_coef", None),
    "normalize_advantage": ("normalize_advantage", True),
}
#: settings whose own ``None`` is a value, so that "from the loss" is spelled ``"auto"``
_AUTO_SETTINGS = ("max_grad_norm", "vf_coef", "normalize_advantage")


def resolve_meta_loss(meta_loss: MetaLoss | str | os.PathLike | None, env: Any, meta_train: bool,
                      meta_loss_kwargs: Mapping[str, Any] | None,
                      meta_inputs: Any = None) -> tuple[MetaLoss | None, dict[str, Any]]:
    """The meta-loss ML3 will use (a given one, the zoo's for the env, or ``None``: a new one) and its metadata.

    The zoo's loss stands in only when nothing else is asked for: no ``meta_loss``, ``meta_loss_kwargs`` or
    ``meta_inputs`` and ``meta_train=False``. A file is read once here; its weights are checked against the
    env's inputs later.
    """
    if meta_loss is None and not meta_train and meta_loss_kwargs is None and meta_inputs is None:
        path = zoo_loss_path(_env_id_of(env) or "")
        if path is not None:
            meta_loss = path
    if meta_loss is None:
        return None, {}
    if not isinstance(meta_loss, MetaLoss):
        meta_loss = MetaLoss.load(meta_loss)
    return meta_loss, dict(meta_loss.metadata)


def settings_from_loss(given: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """ML3's arguments with each one left open (``None``/``"auto"``) taken from the loss file, else its default."""
    settings = {}
    for name, (key, default) in LOSS_SETTINGS.items():
        value = given[name]
        if (value is None and name not in _AUTO_SETTINGS) or (name in _AUTO_SETTINGS and value == "auto"):
            value = metadata.get(key, default)
        settings[name] = value
    return settings


def env_for_loss(env: Any, metadata: Mapping[str, Any]) -> Any:
    """An env id made as the loss was meta-trained: ``n_envs`` copies, VecNormalize if it saw normalised
    observations (with its reward normalisation). Envs given as objects are used as they are."""
    if not isinstance(env, str) or not metadata:
        return env
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    vec_env = make_vec_env(env, n_envs=int(metadata.get("n_envs", 1)))
    if metadata.get("obs_normalization") is None:
        return vec_env
    return VecNormalize(vec_env, norm_obs=True, norm_reward=bool(metadata.get("norm_reward", False)),
                        gamma=float(metadata.get("gamma", 0.99)))


def _env_id_of(env: Any) -> str | None:
    if isinstance(env, str):
        return env
    try:
        spec = env.get_attr("spec")[0] if hasattr(env, "get_attr") else env.spec
    except (AttributeError, IndexError):
        return None
    return getattr(spec, "id", None)


def build_meta_loss(model: "ML3", spec: InputSpec) -> MetaLoss:
    """The model's meta-loss: from its saved config (load), a given loss or file (checked), or new."""
    if model._meta_loss_config is not None:  # ML3.load(): architecture from the file, weights follow
        meta_loss = MetaLoss.from_config(model._meta_loss_config, source="the saved ML3 model")
        meta_loss.spec.require(spec, "Loading an ML3 model")
        return meta_loss
    source = model._meta_loss_source
    if source is None:
        meta_loss = MetaLoss(spec, **model.meta_loss_kwargs)
        if not model.meta_train and meta_loss.surrogate is None:
            warnings.warn(
                f"ML3 with meta_train=False and no meta_loss trains the policy with a new, untrained (random) "
                f"meta-loss, which teaches nothing useful{_zoo_hint(model.env_id)}. Pass meta_loss= (a file from "
                "ML3.save_meta_loss), meta_train=True to meta-train one, or meta_loss_kwargs={'surrogate': 'ppo'} "
                "for a loss that starts as PPO's update.",
                UntrainedMetaLossWarning, stacklevel=5,
            )
        return meta_loss
    if isinstance(source, MetaLoss):
        source.spec.require(spec, "ML3(meta_loss=...)")
        meta_loss = source
        zoo = meta_loss.metadata.get("zoo")
        if isinstance(zoo, dict) and not zoo.get("trained", True) and not model.meta_train:
            warnings.warn(
                f"The zoo's loss for {model.env_id} was not improved by meta-training ({zoo.get('selection')}): "
                "it trains policies with its starting point's update, here PPO's clipped surrogate. "
                "Meta-train one (meta_train=True) for a learned effect.",
                UntrainedMetaLossWarning, stacklevel=5,
            )
    else:
        meta_loss = MetaLoss.load(source, inputs=spec)
    trained_on, here = meta_loss.metadata.get("env_id"), model.env_id
    if trained_on is not None and here is not None and trained_on != here:
        warnings.warn(
            f"This meta-loss was meta-trained on {trained_on} and is used on {here}: its input widths fit, "
            "but what it learned may not transfer. Meta-train one on this env for a fair result.",
            stacklevel=4,
        )
    trained_with = meta_loss.metadata.get("task_loss")
    if "advantage" in model.meta_inputs and trained_with is not None and trained_with != model.task_loss:
        raise MetaLossSpecError(
            f"This meta-loss reads the 'advantage' input as task_loss={trained_with!r} computes it (GAE "
            f"advantage or centred return), and this ML3 has task_loss={model.task_loss!r}; "
            f"pass task_loss={trained_with!r}."
        )
    return meta_loss


def _zoo_hint(env_id: str | None) -> str:
    if env_id is not None and zoo_loss_path(env_id) is not None:
        return f" (the zoo's loss for {env_id} is used when meta_loss_kwargs and meta_inputs are left out)"
    return f" (the zoo ships meta-trained losses for {available_losses()} only)"


def sync_observation_normalization(model: "ML3") -> None:
    """A meta-loss sees observations as they were normalised when it was meta-trained: keep that true."""
    saved = model.meta_loss.metadata.get("obs_normalization")
    vec_normalize = model.get_vec_normalize_env()
    normalizing = vec_normalize is not None and vec_normalize.norm_obs
    if model.env is None or (saved is None and not normalizing):
        return
    if saved is not None and not normalizing:
        raise MetaLossSpecError(
            "This meta-loss was meta-trained on VecNormalize-d observations but this env does not normalise "
            "observations: wrap it in VecNormalize(env, norm_obs=True)."
        )
    if saved is None and normalizing and model._meta_loss_source is not None and not model.meta_train:
        raise MetaLossSpecError(
            "This env normalises observations (VecNormalize) but the meta-loss was meta-trained on raw "
            "observations: use norm_obs=False, or meta-train the loss with VecNormalize."
        )
    if saved is not None:
        mean = np.asarray(saved["mean"], dtype=np.float64)
        if mean.shape != vec_normalize.obs_rms.mean.shape:
            raise MetaLossSpecError(
                f"The meta-loss's observation normalisation has shape {mean.shape}, this env's "
                f"{vec_normalize.obs_rms.mean.shape}."
            )
        vec_normalize.obs_rms.mean = mean
        vec_normalize.obs_rms.var = np.asarray(saved["var"], dtype=np.float64)
        vec_normalize.obs_rms.count = float(saved.get("count", 1e4))


def save_meta_loss(model: "ML3", path: str | os.PathLike) -> None:
    """Write the meta-loss on its own, its metadata saying what it was meta-trained with: the inputs, env,
    inner step, task loss and the observation normalisation it saw (a later ML3 restores it)."""
    metadata = dict(model.meta_loss.metadata)
    metadata.update({
        "algorithm": "ML3",
        "meta_inputs": list(model.meta_inputs),
        "observation_shape": list(model.observation_space.shape),
        "action_shape": list(model.action_space.shape),
        "goal_slice": None if model.goal_slice is None else [model.goal_slice.start, model.goal_slice.stop],
        "inner_lr": float(model.lr_schedule(1)),
        "inner_optimizer": model.inner_optimizer,
        "max_grad_norm": model.max_grad_norm,
        "vf_coef": model.vf_coef,
        "normalize_advantage": model.normalize_advantage,
        "n_envs": model.n_envs,
        "n_steps": model.n_steps,
        "batch_size": model.batch_size,
        "n_epochs": model.n_epochs,
        "gamma": model.gamma,
        "gae_lambda": model.gae_lambda,
        "policy_reset_interval": model.policy_reset_interval,
        "task_loss": model.task_loss,  # what the advantage meta-input means
        "task_reward": model.task_reward,
    })
    env_id = model.env_id
    if env_id:
        metadata["env_id"] = env_id
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None and vec_normalize.norm_obs:
        metadata["obs_normalization"] = {
            "mean": vec_normalize.obs_rms.mean.tolist(),
            "var": vec_normalize.obs_rms.var.tolist(),
            "count": float(vec_normalize.obs_rms.count),
            "clip_obs": float(vec_normalize.clip_obs),
            "epsilon": float(vec_normalize.epsilon),
        }
        metadata["norm_reward"] = bool(vec_normalize.norm_reward)
    else:
        metadata.pop("obs_normalization", None)
        metadata.pop("norm_reward", None)
    model.meta_loss.metadata = metadata
    model.meta_loss.save(path)


def finished_meta_loss(model: "ML3", path: str | os.PathLike | None) -> MetaLoss:
    """The meta-trained loss of ``model``: saved to ``path`` and read back (its metadata as the file has it), or
    a copy with the meta-inputs it reads when there is no path."""
    if path is not None:
        model.save_meta_loss(path)
        return MetaLoss.load(path)
    meta_loss = copy.deepcopy(model.meta_loss)
    meta_loss.metadata.update({"meta_inputs": list(model.meta_inputs)})
    return meta_loss


__all__ = ["LOSS_SETTINGS", "build_meta_loss", "finished_meta_loss", "env_for_loss", "resolve_meta_loss", "save_meta_loss",
           "settings_from_loss", "sync_observation_normalization"]
