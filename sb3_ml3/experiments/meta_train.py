"""The one meta-training pipeline of the RL experiments (Algorithm 4), checkpointed and resumable.

:func:`meta_train_loss` meta-trains one loss on an env's **train** goals, keeps the best of its
meta-validated snapshots and checkpoints itself (:class:`MetaTrainCheckpoint`), so hours of
meta-training survive being stopped. :func:`losses_for_seeds` is what ``ml3 compare``, the
examples and the benchmarks call: one loss per seed, given as files or meta-trained, with the
meta-train samples that the break-even needs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv

from sb3_ml3.atomic import atomic_path
from sb3_ml3.experiments.runs import make_train_env
from sb3_ml3.experiments.settings import policy_kwargs_for, settings_for
from sb3_ml3.experiments.store import RunLog, atomic_write_json, jsonable
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.ml3.callbacks import MetaValidationCallback
from sb3_ml3.ml3.loss_files import finished_meta_loss


class MetaTrainCheckpoint(BaseCallback):
    """Save an interrupted meta-training's state every ``save_freq`` env steps, so it can resume.

    Between rollouts (after the outer step and any meta-validation) it writes the ML3 model
    (``ML3.save``: phi, its Adam state, the policy, the critics) to ``path``, and beside it
    ``<path>.json`` (``fingerprint``, the env steps, the :class:`MetaValidationCallback` history and its
    best snapshot's metric and steps) and ``<path>.best.pt`` (that snapshot's weights). To resume:
    ``ML3.load(path)``, then pass the state :meth:`read` returns as ``restore`` (with the validation
    callback listed before this one in the ``CallbackList``), which gives the new validation callback
    its history and best snapshot back. Each file is written to a temporary name and then renamed, so
    a process killed mid-write leaves complete files.
    """

    def __init__(self, path: str | os.PathLike, save_freq: int, fingerprint: Any = None,
                 validation: MetaValidationCallback | None = None, restore: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if save_freq < 1:
            raise ValueError(f"save_freq must be positive, got {save_freq}.")
        self.path = os.fspath(path)
        self.save_freq = int(save_freq)
        self.fingerprint = jsonable(fingerprint)  # as read() returns it from the JSON file
        self.validation = validation
        self._restore = restore
        self._last_save = 0

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether a complete checkpoint (the model and its state file) is at ``path``."""
        path = os.fspath(path)
        return os.path.exists(path) and os.path.exists(path + ".json")

    @staticmethod
    def read(path: str | os.PathLike) -> dict[str, Any] | None:
        """The state saved beside the checkpoint ``path``, or ``None`` when there is no checkpoint."""
        path = os.fspath(path)
        if not MetaTrainCheckpoint.exists(path):
            return None
        with open(path + ".json") as f:
            try:
                state = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"The meta-training checkpoint {path}.json is corrupted ({error}); delete "
                                 f"{path} and {path}.json to meta-train from the start.") from error
        best = path + ".best.pt"
        state["best_state"] = torch.load(best, weights_only=True) if os.path.exists(best) else None
        return state

    @staticmethod
    def load_model(path: str | os.PathLike, env: VecEnv, fingerprint: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(ML3 model, state)`` of the checkpoint at ``path`` (``None`` if there is none), after checking
        that it was made with ``fingerprint``; pass the state as ``restore`` to the new callback."""
        from sb3_ml3.ml3 import ML3

        state = MetaTrainCheckpoint.read(path)
        if state is None:
            return None
        if state["fingerprint"] != jsonable(fingerprint):
            raise ValueError(
                f"The meta-training checkpoint {os.fspath(path)} was made with other settings (other ML3 settings, "
                f"budget or policy); resume with those, or delete {os.fspath(path)} and its .json to start afresh."
            )
        return ML3.load(path, env=env), state

    def _init_callback(self) -> None:
        self._last_save = self.num_timesteps
        if self._restore is not None and self.validation is not None:  # after the validation's own init
            v, r = self.validation, self._restore
            v.history = [(int(t), float(m)) for t, m in r["history"]]
            v.best_metric = float(r["best_metric"]) if r["best_metric"] is not None else -np.inf
            v.best_timesteps = r["best_timesteps"]
            v.best_state = r["best_state"]
            v.validation_timesteps = int(r["validation_timesteps"])
            v._last_eval = int(r["last_eval"])

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self._last_save >= self.save_freq:
            self.save()

    def save(self) -> None:
        self._last_save = self.num_timesteps
        v = self.validation
        state = {
            "fingerprint": self.fingerprint, "num_timesteps": int(self.num_timesteps),
            "history": v.history if v else [], "validation_timesteps": v.validation_timesteps if v else 0,
            "best_metric": (v.best_metric if v and np.isfinite(v.best_metric) else None),
            "best_timesteps": v.best_timesteps if v else None, "last_eval": v._last_eval if v else 0,
        }
        self.model.save(self.path)  # ML3.save writes atomically
        if v is not None and v.best_state is not None:
            with atomic_path(self.path + ".best.pt") as tmp:
                torch.save(v.best_state, tmp)
        atomic_write_json(self.path + ".json", state, indent=None)

    @staticmethod
    def remove_files(path: str | os.PathLike) -> None:
        """Delete the files of the checkpoint at ``path``, if any."""
        path = os.fspath(path)
        for suffix in ("", ".json", ".best.pt"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)

    def remove(self) -> None:
        """Delete this checkpoint's files (meta-training finished)."""
        self.remove_files(self.path)


def meta_train_loss(env_id: str, seed: int, timesteps: int, settings: Mapping[str, Any] | None = None,
                    path: str | os.PathLike | None = None, env_kwargs: dict[str, Any] | None = None,
                    normalize: Any = None, progress_bar: bool = False,
                    checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                    fingerprint: Any = None, tasks_per_step: int = 1, workers: int = 0,
                    address: str | None = None) -> tuple[MetaLoss, int]:
    """Meta-train a loss on ``env_id``'s **train** goals (Algorithm 4); returns it and its env steps.

    With ``settings["meta_validation"]`` (keyword arguments of :class:`MetaValidationCallback`) the
    loss is the best of its meta-validated snapshots, and the validation's env steps are counted in.
    The env steps are written into the loss's metadata as ``meta_train_timesteps`` (and the file, if
    ``path`` is given), so a later comparison can report them and the break-even.

    ``checkpoint_path``: save the meta-training state there (:class:`MetaTrainCheckpoint`) every
    ``checkpoint_every`` env steps (default: the validation's ``eval_freq``, else 100k), and resume from
    it when it exists: meta-training that takes hours survives being stopped. The checkpoint must carry
    the same ``fingerprint`` (the settings that made it); it is deleted when meta-training finishes.
    A resumed run continues phi, its Adam state and the validation history; its random streams start
    afresh, so it is not bit-identical to an uninterrupted run. ``normalize`` (default: the recipe's)
    wraps the envs in VecNormalize; the statistics then travel in the loss file.

    ``tasks_per_step > 1`` averages the meta-gradients of that many ML3 models (own envs, policies and seeds) per
    outer step, ``workers >= 1`` spreads them over Ray workers (``address``: an existing cluster):
    :func:`sb3_ml3.distributed.rl_trainer.meta_train_on_tasks`, with ``timesteps`` the budget over all tasks and
    its checkpoint at ``checkpoint_path``; the workers' report is in the loss's metadata (``distributed``).
    ``settings["meta_train_tasks_per_step"]`` sets ``tasks_per_step`` too (the larger of the two counts).
    """
    from sb3_ml3.ml3 import ML3

    settings = dict(settings if settings is not None else settings_for("ml3", env_id))
    tasks_per_step = max(int(tasks_per_step), int(settings.pop("meta_train_tasks_per_step", 1)))
    if tasks_per_step > 1 or workers > 0:
        from sb3_ml3.distributed.rl_trainer import meta_train_on_tasks

        if normalize is not None:
            settings["normalize"] = normalize
        every = checkpoint_every or int((settings.get("meta_validation") or {}).get("eval_freq", 100_000))
        meta_loss, used, _ = meta_train_on_tasks(
            env_id, seed, timesteps, settings, tasks_per_step=tasks_per_step, workers=workers, address=address,
            path=path, checkpoint_path=checkpoint_path, checkpoint_every=every, env_kwargs=env_kwargs,
            fingerprint=fingerprint, verbose=int(progress_bar))
        if checkpoint_path is not None:
            _remove(os.fspath(checkpoint_path), os.fspath(checkpoint_path) + ".best.zip")
        return meta_loss, used
    if normalize is None:
        normalize = settings.get("normalize", False)
    env = make_train_env(env_id, settings["n_envs"], seed, split="train", normalize=normalize,
                         gamma=float(settings["meta_train"].get("gamma", 0.99)), env_kwargs=env_kwargs)
    loaded = MetaTrainCheckpoint.load_model(checkpoint_path, env, fingerprint) if checkpoint_path is not None else None
    restored = None
    if loaded is not None:
        model, restored = loaded
    else:
        model = ML3("MlpPolicy", env, meta_train=True, seed=seed,
                    policy_kwargs=policy_kwargs_for(settings.get("meta_train_net_arch", [64, 64])),
                    **settings["meta_train"])
    callbacks: list[BaseCallback] = []
    validation = None
    if settings.get("meta_validation"):
        validation = MetaValidationCallback(env_id, seed=seed, env_kwargs=env_kwargs, **settings["meta_validation"])
        callbacks.append(validation)
    checkpoint = None
    if checkpoint_path is not None:
        every = checkpoint_every or (validation.eval_freq if validation is not None else 100_000)
        checkpoint = MetaTrainCheckpoint(checkpoint_path, every, fingerprint, validation, restored)
        callbacks.append(checkpoint)
    remaining = timesteps - (model.num_timesteps if restored is not None else 0)
    if remaining > 0:
        model.learn(remaining, callback=CallbackList(callbacks) if callbacks else None, progress_bar=progress_bar,
                    reset_num_timesteps=restored is None)
    used = int(model.num_timesteps)
    if validation is not None and validation.history:  # the selection's samples are part of meta-training's cost
        used += validation.validation_timesteps
        model.meta_loss.metadata["meta_validation"] = {
            "history": validation.history, "best_timesteps": validation.best_timesteps,
            "best_metric": validation.best_metric, "validation_timesteps": validation.validation_timesteps,
            "settings": dict(settings["meta_validation"]),
        }
    model.meta_loss.metadata["meta_train_timesteps"] = used
    model.meta_loss.metadata["meta_train_seed"] = int(seed)
    if restored is not None:
        model.meta_loss.metadata["resumed_at_timesteps"] = int(restored["num_timesteps"])
    meta_loss = finished_meta_loss(model, path)
    if checkpoint is not None:
        checkpoint.remove()
    env.close()
    return meta_loss, used


def _remove(*paths: str) -> None:
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def meta_train_fingerprint(settings: Mapping[str, Any], meta_train_steps: int) -> Any:
    """What makes a meta-trained loss: the ML3 settings other than meta-test's, and the budget.

    ``compile_inner_step`` is left out: it changes the speed, not the loss (up to float rounding), so a run may
    resume with or without it."""
    kept = {k: v for k, v in settings.items() if k != "meta_test"}
    if isinstance(kept.get("meta_train"), Mapping):
        kept["meta_train"] = {k: v for k, v in kept["meta_train"].items() if k != "compile_inner_step"}
    return jsonable({"meta_train": kept, "meta_train_steps": meta_train_steps})


def losses_for_seeds(env_id: str, seeds: Sequence[int], settings: Mapping[str, Any],
                     meta_loss: MetaLoss | str | os.PathLike | None = None, meta_train_steps: int | None = None,
                     meta_train_samples: int | None = None, env_kwargs: dict[str, Any] | None = None,
                     out_dir: str | os.PathLike | None = None, run_log: RunLog | None = None, resume: bool = False,
                     progress: bool = False, log: Callable[[str], None] = print, workers: int = 0,
                     address: str | None = None) -> tuple[dict[int, MetaLoss | str], dict[str, Any]]:
    """ML3's loss per seed and a record of where it came from: ``(losses, meta_train)``.

    ``meta_loss`` is a :class:`MetaLoss`, a file from ``ML3.save_meta_loss``, a path with ``{seed}``
    in it (one file per seed), or ``None`` to meta-train one per seed on the train goals for
    ``meta_train_steps`` env steps (saved as ``out_dir/meta_loss_seed{s}.zip`` and checkpointed
    beside it when ``out_dir`` is given; with ``resume`` a finished loss is reused and an
    interrupted one continues from its checkpoint). ``meta_train["samples"]`` is the mean of the
    meta-train env steps per seed (validation included), or ``meta_train_samples`` when given.
    ``settings["meta_train_tasks_per_step"]`` > 1 or ``workers`` >= 1 meta-trains each seed's loss on several tasks
    per outer step (:func:`meta_train_loss`), on Ray workers with ``workers`` (``address``: an existing cluster).
    """
    losses: dict[int, MetaLoss | str] = {}
    record: dict[str, Any] = {"given": meta_loss is not None, "per_seed": {}}
    if meta_loss is not None:
        per_seed = isinstance(meta_loss, (str, os.PathLike)) and "{seed}" in os.fspath(meta_loss)
        if per_seed:
            losses = {seed: os.fspath(meta_loss).format(seed=seed) for seed in seeds}
        else:
            losses = {seed: meta_loss if isinstance(meta_loss, MetaLoss) else os.fspath(meta_loss) for seed in seeds}
        missing = [p for p in losses.values() if isinstance(p, str) and not os.path.exists(p)]
        if missing:
            raise ValueError(f"--meta-loss {os.fspath(meta_loss)!r}: there is no file {missing[0]!r}.")
        recorded = []
        for seed, loss in losses.items():
            loaded = loss if isinstance(loss, MetaLoss) else MetaLoss.load(loss)
            recorded.append(loaded.metadata.get("meta_train_timesteps"))
            if per_seed:
                record["per_seed"][str(seed)] = {"samples": recorded[-1], "path": loss}
        known = [r for r in recorded if r is not None]
        record["samples"] = (meta_train_samples if meta_train_samples is not None
                             else float(np.mean(known)) if len(known) == len(recorded) else None)
        record["source"] = "MetaLoss object" if isinstance(meta_loss, MetaLoss) else os.fspath(meta_loss)
        return losses, record
    if meta_train_steps is None:
        meta_train_steps = int(settings["meta_train_timesteps"])
    fingerprint = meta_train_fingerprint(settings, meta_train_steps)
    record.update(timesteps=meta_train_steps, settings=jsonable(settings["meta_train"]),
                  net_arch=settings.get("meta_train_net_arch", [64, 64]))
    for seed in seeds:
        t0 = time.time()
        path = None if out_dir is None else os.path.join(out_dir, f"meta_loss_seed{seed}.zip")
        if resume and path is not None and os.path.exists(path):
            if run_log is not None and run_log.meta_losses.get(seed) != fingerprint:
                raise ValueError(f"{path} was meta-trained with other ML3 settings or budget than this command's; "
                                 "move it away to meta-train it again, or resume with the settings that made it.")
            used = MetaLoss.load(path).metadata.get("meta_train_timesteps")
            log(f"resuming: the meta-loss of seed {seed} is {path} ({used} env steps)")
            losses[seed] = path
            record["per_seed"][str(seed)] = {"samples": used, "path": path, "resumed": True}
            continue
        log(f"meta-training ML3's loss on {env_id}'s train goals, seed {seed}: {meta_train_steps} env steps")
        several = int(settings.get("meta_train_tasks_per_step", 1)) > 1 or workers > 0
        # the several-task trainer keeps its own checkpoint format (the tasks' models, phi, Adam, validation)
        suffix = ".pt" if several else ".zip"
        checkpoint = None if path is None else os.path.join(out_dir, f"meta_train_seed{seed}_checkpoint{suffix}")
        if checkpoint is not None and not resume and several:  # a fresh comparison starts afresh
            _remove(checkpoint, checkpoint + ".best.zip")
        elif checkpoint is not None and not resume:
            MetaTrainCheckpoint.remove_files(checkpoint)
        if checkpoint is not None and (os.path.exists(checkpoint) if several else MetaTrainCheckpoint.exists(checkpoint)):
            log(f"resuming the meta-training of seed {seed} from {checkpoint}")
        loss, used = meta_train_loss(env_id, seed, meta_train_steps, settings, path=path, env_kwargs=env_kwargs,
                                     progress_bar=progress, checkpoint_path=checkpoint, fingerprint=fingerprint,
                                     workers=workers, address=address)
        losses[seed] = path if path is not None else loss
        if run_log is not None:
            run_log.add_meta_loss(seed, fingerprint)
        record["per_seed"][str(seed)] = {"samples": used, "wall_time_s": round(time.time() - t0, 2), "path": path}
    record["samples"] = float(np.mean([v["samples"] for v in record["per_seed"].values()]))
    return losses, record


__all__ = ["MetaTrainCheckpoint", "losses_for_seeds", "meta_train_fingerprint", "meta_train_loss"]
