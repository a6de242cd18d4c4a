"""A meta-loss and the setting it meets: building it for a model, its file's metadata, its normalisation.

A meta-loss file records what the loss was meta-trained with (inputs, env id, inner step, task loss,
observation normalisation). Building a model's loss checks the file against the model's setting and
says what differs; saving writes those facts; a loss meta-trained on normalised observations gets the
statistics it saw.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from sb3_ml3.meta_loss import InputSpec, MetaLoss, MetaLossSpecError
from sb3_ml3.ml3.checks import UntrainedMetaLossWarning

if TYPE_CHECKING:
    from sb3_ml3.ml3.ml3 import ML3


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
                "ML3 with meta_train=False and no meta_loss trains the policy with a new, untrained (random) "
                "meta-loss, which teaches nothing useful. Pass meta_loss= (a file from ML3.save_meta_loss), "
                "meta_train=True to meta-train one, or meta_loss_kwargs={'surrogate': 'ppo'} for a loss that "
                "starts as PPO's update.",
                UntrainedMetaLossWarning, stacklevel=5,
            )
        return meta_loss
    if isinstance(source, MetaLoss):
        source.spec.require(spec, "ML3(meta_loss=...)")
        meta_loss = source
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
        "n_steps": model.n_steps,
        "batch_size": model.batch_size,
        "n_epochs": model.n_epochs,
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
    else:
        metadata.pop("obs_normalization", None)
    model.meta_loss.metadata = metadata
    model.meta_loss.save(path)


__all__ = ["build_meta_loss", "save_meta_loss", "sync_observation_normalization"]
