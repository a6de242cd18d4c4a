"""Callbacks for ML3 under rl-zoo3 (its ``callback:`` key): keep the learned loss in the run's folder.

Where the loss goes. rl-zoo3's ``ExperimentManager`` puts everything of a run into
``self.save_path`` (``<-f>/<algo>/<env id>_<n>``, e.g. ``logs/ml3/PointmassGoal-v0_1``), but hands
callbacks nothing but the model. It builds the training envs with ``monitor_dir=self.save_path``,
so the folder of the training env's ``Monitor`` file *is* the run folder: :func:`run_folder` reads
it from there. This needs neither a tensorboard log (``-tb`` is optional) nor a patched rl-zoo3,
and a run without a Monitor file (``-optimize`` trials, a plain ``model.learn``) saves no file
unless given a ``path`` -- the loss is inside the saved ML3 model either way.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from sb3_ml3.ml3.callbacks import MetaValidationCallback

#: the learned loss's file name in the run folder
META_LOSS_FILE = "meta_loss.zip"


def run_folder(model: BaseAlgorithm) -> str | None:
    """The folder of the training env's ``Monitor`` file (rl-zoo3's run folder), ``None`` without one."""
    env = model.get_env()
    if env is None:
        return None
    try:
        writers = env.get_attr("results_writer", indices=[0])
    except AttributeError:  # no Monitor wrapper
        return None
    handle = getattr(writers[0], "file_handler", None) if writers else None
    return os.path.dirname(handle.name) if handle is not None else None


def _meta_loss_path(model: BaseAlgorithm, path: str | os.PathLike | None, owner: str) -> str | None:
    if path is not None:
        return os.fspath(path)
    folder = run_folder(model)
    if folder is None:
        warnings.warn(f"{owner}: the training env has no Monitor file (an rl-zoo3 -optimize trial, or not an rl-zoo3 "
                      f"run), so no run folder to save the meta-loss into; pass path=... to save it anyway.",
                      stacklevel=3)
        return None
    return os.path.join(folder, META_LOSS_FILE)


class SaveMetaLossCallback(BaseCallback):
    """Save an ML3 model's meta-trained loss when training ends (``ML3.save_meta_loss`` format).

    :param path: the file; default ``meta_loss.zip`` in the rl-zoo3 run folder (:func:`run_folder`).
    """

    def __init__(self, path: str | os.PathLike | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.path = path
        self.saved_path: str | None = None

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if not getattr(self.model, "meta_train", False):  # only a meta-trained loss is new
            return
        target = _meta_loss_path(self.model, self.path, type(self).__name__)
        if target is not None:
            self.model.save_meta_loss(target)
            self.saved_path = target
            if self.verbose:
                print(f"saved the learned loss to {target}")


class MetaValidationZooCallback(MetaValidationCallback):
    """:class:`~sb3_ml3.ml3.callbacks.MetaValidationCallback` that saves the kept loss in the run folder.

    The best loss so far is written to ``path`` whenever a validation improves on it (an interrupted
    run keeps it), and the kept loss -- the best validated one, or the final one when no validation
    ran -- when training ends, with the validation history in its metadata. The saved ML3 model holds
    the kept loss too (``restore_best``).

    :param env_id: the goal env to validate on (its train split).
    :param path: the loss file; default ``meta_loss.zip`` in the rl-zoo3 run folder (:func:`run_folder`).
    :param kwargs: :class:`~sb3_ml3.ml3.callbacks.MetaValidationCallback`'s other arguments
        (``eval_freq``, ``eval_at_updates``, ``n_goals``, ...).
    """

    def __init__(self, env_id: str, path: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(env_id, **kwargs)
        self.path = path
        self.saved_path: str | None = None

    def _init_callback(self) -> None:
        super()._init_callback()
        self.saved_path = _meta_loss_path(self.model, self.path, type(self).__name__)
        if self.best_meta_loss_path is None:
            self.best_meta_loss_path = self.saved_path

    def _on_training_end(self) -> None:
        # rl-zoo3 ends its first callback twice (once more for its progress bar): this must be idempotent
        super()._on_training_end()
        if self.history:
            self.model.meta_loss.metadata["meta_validation"] = {
                "history": [list(h) for h in self.history], "best_timesteps": self.best_timesteps,
                "best_metric": float(self.best_metric), "validation_timesteps": int(self.validation_timesteps)}
        if self.saved_path is not None:
            self.model.save_meta_loss(self.saved_path)
            if self.verbose:
                print(f"saved the learned loss to {self.saved_path}")


__all__ = ["META_LOSS_FILE", "MetaValidationZooCallback", "SaveMetaLossCallback", "run_folder"]
