"""The zoo: the best meta-loss we have per registered goal env, shipped inside the package.

``ML3("MlpPolicy", "ReacherGoal-v0")`` with no ``meta_loss`` and ``meta_train=False`` trains its policy
with the zoo's loss for that env, in the setting the loss was meta-trained for (its file's metadata:
inputs, inner optimizer and step size, rollout and minibatch sizes, observation normalisation). Each
file says where it comes from under ``metadata["zoo"]``: the command that meta-trained it, how it was
chosen (on train-split validation goals), and what it measured on held-out goals beside the tuned PPO.

An env without a zoo loss gets no silent stand-in: ML3 warns (:class:`UntrainedMetaLossWarning`).
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from sb3_ml3.meta_loss import MetaLoss

#: keys every zoo file's ``metadata["zoo"]`` carries
PROVENANCE_KEYS = ("source", "command", "selection", "meta_test", "trained")


def _folder() -> Any:
    return resources.files(__name__).joinpath("losses")


def available_losses() -> list[str]:
    """The env ids that have a loss in the zoo."""
    folder = _folder()
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".zip")] for entry in folder.iterdir() if entry.name.endswith(".zip"))


def zoo_loss_path(env_id: str) -> str | None:
    """The file of ``env_id``'s zoo loss, or ``None`` if the zoo has none."""
    if not isinstance(env_id, str) or os.sep in env_id or "/" in env_id:
        return None
    entry = _folder().joinpath(f"{env_id}.zip")
    return os.fspath(entry) if entry.is_file() else None


def load_zoo_loss(env_id: str) -> MetaLoss:
    """``env_id``'s zoo loss; ``KeyError`` naming the envs that have one if it has none."""
    path = zoo_loss_path(env_id)
    if path is None:
        raise KeyError(f"The zoo has no meta-loss for {env_id!r}; it has one for {available_losses()}.")
    return MetaLoss.load(path)


def provenance(env_id: str) -> dict[str, Any]:
    """Where ``env_id``'s zoo loss comes from and what it measured (its ``metadata["zoo"]``)."""
    return dict(load_zoo_loss(env_id).metadata.get("zoo", {}))


__all__ = ["PROVENANCE_KEYS", "available_losses", "load_zoo_loss", "provenance", "zoo_loss_path"]
