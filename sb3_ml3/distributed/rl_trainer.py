"""Model-free ML3 meta-trained on several tasks per outer step, in this process or on Ray workers.

:func:`meta_train_on_tasks` is what :func:`sb3_ml3.experiments.meta_train_loss` runs when it is given
``tasks_per_step > 1`` or ``workers >= 1``: ``tasks_per_step`` ML3 models (:mod:`sb3_ml3.distributed.rl_shard`)
each collect a rollout and differentiate their last inner update, the driver averages their meta-gradients,
takes the same Adam step on phi as a single ML3 model would (``meta_lr``, ``meta_max_grad_norm``), and sends the
new phi back for their inner updates. With one task and no workers it is the single model's meta-training, step
for step (tests/test_distributed_rl.py). Meta-validation (``settings["meta_validation"]``) keeps the best phi as
in the single-process run, on a driver-side model that holds the meta-loss and its setting, and the result is
saved in the same meta-loss file format.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from stable_baselines3.common.logger import (
    HumanOutputFormat,
    Logger,
    TensorBoardOutputFormat,
)

from sb3_ml3.atomic import jsonable
from sb3_ml3.distributed.rl_shard import RLProblemSpec
from sb3_ml3.distributed.trainer import DistributedMetaTrainer
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.ml3.loss_files import finished_meta_loss


def _logger(verbose: int, tensorboard_log: str | None) -> Logger:
    formats: list[Any] = [HumanOutputFormat(sys.stdout)] if verbose else []
    if tensorboard_log is not None:
        formats.append(TensorBoardOutputFormat(tensorboard_log))
    return Logger(folder=tensorboard_log, output_formats=formats)


def _sync_normalization(model: Any, stats: Mapping[str, Any] | None) -> None:
    """Give the driver's model the observation statistics of the lowest task (the loss file records them)."""
    normalize = model.get_vec_normalize_env()
    if normalize is None or not stats or "obs_rms" not in stats:
        return
    rms = stats["obs_rms"]
    normalize.obs_rms.mean = np.asarray(rms["mean"], dtype=np.float64)
    normalize.obs_rms.var = np.asarray(rms["var"], dtype=np.float64)
    normalize.obs_rms.count = float(rms["count"])


def _restore_validation(validation: Any, trainer: DistributedMetaTrainer, steps_per_outer: int) -> None:
    """A resumed run's validation history and best phi, from its checkpoint and the best loss saved beside it."""
    from sb3_ml3.distributed.checkpoint import load_checkpoint

    path = trainer.checkpoint_path
    if not path or not os.path.exists(path):
        return
    record = load_checkpoint(path, trainer.identity())["record"]
    validation.history = [(int(i) * steps_per_outer, float(m)) for i, m in zip(record["eval_iterations"],
                                                                               record["eval_metric"])]
    best = path + ".best.zip"
    if validation.history and os.path.exists(best):
        k = int(np.argmax([m for _, m in validation.history]))
        validation.best_timesteps, validation.best_metric = validation.history[k]
        validation.best_state = {k: v.detach().clone() for k, v in MetaLoss.load(best).state_dict().items()}


def meta_train_on_tasks(env_id: str, seed: int, timesteps: int, settings: Mapping[str, Any], tasks_per_step: int = 1,
                        workers: int = 0, address: str | None = None, path: str | os.PathLike | None = None,
                        checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int = 100_000,
                        resume: bool = True, env_kwargs: Mapping[str, Any] | None = None, fingerprint: Any = None,
                        verbose: int = 0, tensorboard_log: str | None = None,
                        on_step: Callable[[DistributedMetaTrainer, int], None] | None = None,
                        ) -> tuple[MetaLoss, int, dict[str, Any]]:
    """Meta-train one loss with ``tasks_per_step`` ML3 models per outer step; returns it, the env steps it cost
    (all tasks' and meta-validation's) and the workers' report.

    ``timesteps`` is the budget over all tasks: each task collects ``ceil(timesteps / tasks_per_step)`` env steps
    in whole rollouts. ``checkpoint_path``: a checkpoint every ``checkpoint_every`` env steps (the tasks' models,
    phi and its Adam state, the validation's history), continued when it exists and ``resume`` is set.
    A resumed task draws a fresh rollout with its saved policy and restarts its episodes, so a resumed run
    continues the same meta-training but is not bit-identical to an uninterrupted one. ``on_step(trainer,
    iteration)`` is called after every outer step (after the driver's own log).
    """
    from sb3_ml3.ml3.callbacks import MetaValidationCallback

    if tasks_per_step < max(1, workers):
        raise ValueError(f"{workers} workers need at least as many tasks per outer step; got tasks_per_step="
                         f"{tasks_per_step}.")
    per_task = math.ceil(timesteps / tasks_per_step)
    spec = RLProblemSpec(env_id, int(seed), int(tasks_per_step), dict(settings), per_task,
                         env_kwargs=dict(env_kwargs or {}), fingerprint={"fingerprint": fingerprint})
    driver = spec.build_model(0)  # task 0's model: phi_0, the meta-optimizer and the loss file's setting
    rollout = driver.n_steps * driver.n_envs
    n_outer = math.ceil(per_task / rollout)
    driver.set_logger(_logger(verbose, tensorboard_log))
    validation = None
    if settings.get("meta_validation"):
        best = None if checkpoint_path is None else os.fspath(checkpoint_path) + ".best.zip"
        validation = MetaValidationCallback(env_id, seed=seed, env_kwargs=dict(env_kwargs or {}),
                                            best_meta_loss_path=best, **settings["meta_validation"])
        validation.init_callback(driver)
    every = max(1, int((settings.get("meta_validation") or {}).get("eval_freq", 25_000)) // (rollout * tasks_per_step))

    def steps_done(trainer: DistributedMetaTrainer) -> int:
        return sum(int(s["num_timesteps"]) for r in trainer.last_results for s in r.stats.values())

    with DistributedMetaTrainer(driver.meta_loss, spec, driver.meta_lr, workers=workers, address=address,
                                max_grad_norm=driver.meta_max_grad_norm, checkpoint_path=checkpoint_path,
                                checkpoint_every=max(1, int(checkpoint_every) // (rollout * tasks_per_step)),
                                meta_optimizer=driver.meta_optimizer) as trainer:

        def evaluate(meta_loss: MetaLoss) -> float:
            assert validation is not None
            driver.num_timesteps = validation.num_timesteps = steps_done(trainer) if trainer.last_results else 0
            if trainer.last_results:
                _sync_normalization(driver, trainer.last_results[0].stats[min(trainer.last_results[0].stats)])
            validation._validate()
            return validation.history[-1][1]

        def log(iteration: int) -> None:
            results, outcome = trainer.last_results, trainer.last_outcome
            if not results:
                return
            stats = [s for r in results for s in r.stats.values()]
            returns = [s["ep_rew_mean"] for s in stats if np.isfinite(s["ep_rew_mean"])]
            driver.logger.record("time/total_timesteps", steps_done(trainer))
            driver.logger.record("time/outer_step", iteration + 1)
            if returns:
                driver.logger.record("rollout/ep_rew_mean", float(np.mean(returns)))
            if outcome is not None:
                driver.logger.record("train/task_loss", outcome.task_loss)
                driver.logger.record("train/meta_grad_norm", outcome.grad_norm)
            driver.logger.record("train/tasks_answered", sum(len(r.task_ids) for r in results))
            driver.logger.dump(steps_done(trainer))
            if on_step is not None:
                on_step(trainer, iteration)

        if validation is not None and resume:
            _restore_validation(validation, trainer, rollout * tasks_per_step)
        result = trainer.fit(n_outer, evaluate=evaluate if validation is not None else None,
                             eval_every=every if validation is not None else 0, progress=log, resume=resume)
        report = trainer.report()
        report.update(tasks_per_step=int(tasks_per_step), outer_steps=int(n_outer), rollout=int(rollout),
                      resumed_at_outer_step=int(trainer.start_iteration))
        driver.num_timesteps = steps_done(trainer) if trainer.last_results else 0
        if trainer.last_results:
            first = trainer.last_results[0]
            _sync_normalization(driver, first.stats[min(first.stats)])
    used = int(driver.num_timesteps)
    if validation is not None:
        validation.num_timesteps = used
        if validation.history:
            used += validation.validation_timesteps
        validation.on_training_end()  # restores the best phi
        driver.meta_loss.metadata["meta_validation"] = {
            "history": validation.history, "best_timesteps": validation.best_timesteps,
            "best_metric": validation.best_metric, "validation_timesteps": validation.validation_timesteps,
            "settings": dict(settings["meta_validation"])}
    driver.meta_loss.metadata.update(meta_train_timesteps=used, meta_train_seed=int(seed),
                                     meta_train_tasks_per_step=int(tasks_per_step),
                                     skipped_meta_steps=int(result.skipped_steps), distributed=jsonable(report))
    meta_loss = finished_meta_loss(driver, path)
    driver.env.close()
    return meta_loss, used, report


__all__ = ["meta_train_on_tasks"]
