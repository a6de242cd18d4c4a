"""Meta-validation for ML3's meta-training: keep the meta-loss that trains new policies best.

Meta-training follows a noisy REINFORCE signal, and the meta-loss it ends with is not always the
best it passed through: in our ReacherGoal runs the loss of one seed trained new policies to -8.1
after 100k meta-train steps and to -9.8 after 300k (BENCHMARKS.md, "Meta-validation"). Which
snapshot to keep is a model-selection question, answered like SB3's ``EvalCallback`` answers it
for policies: every ``eval_freq`` env steps a frozen copy of the current meta-loss is *meta-tested*
(Algorithm 5) on validation tasks -- a fresh policy trained by the loss, whose deterministic policy
is measured with the task metric on fixed validation goals after 2, 5 and 10 inner updates -- and
the copy with the best mean of those measurements (the area under its early learning curve, which
is what samples-to-80% rewards) is kept.

The validation tasks come from the **train** split (the tasks meta-training draws from) with their
own seeds; the test split stays unseen. Every env step of validation is counted in
:attr:`MetaValidationCallback.validation_timesteps`, so a comparison can charge it to meta-training.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_ml3.evaluation import evaluate_task_metric

#: validation goals are ``sample_tasks(env_id, n_goals, "train", seed=VALIDATION_TASK_SEED)``
VALIDATION_TASK_SEED = 2000
#: the inner-step settings a validation meta-test copies from the meta-training model
_INNER_SETTINGS = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "max_grad_norm",
                   "meta_inputs", "task_loss", "normalize_advantage", "inner_optimizer", "vf_learning_rate",
                   "vf_coef")


class MetaValidationCallback(BaseCallback):
    """Meta-test a frozen copy of the meta-loss every ``eval_freq`` env steps; keep the best copy.

    Use it with ``ML3(..., meta_train=True).learn(..., callback=MetaValidationCallback(env_id))``.

    :param env_id: the goal env to validate on (its train split).
    :param eval_freq: meta-train env steps between validations (checked between rollouts). The final
        meta-loss is validated too, when training ends, if an earlier one was (otherwise there is no
        choice to make).
    :param eval_at_updates: after how many inner updates (each on ``n_steps * n_envs`` samples) the
        validation policy is measured; the validation metric is the mean of these measurements. The loss
        is meta-trained for ``policy_reset_interval`` updates per policy: validate within that horizon.
    :param n_goals: validation goals on which the trained policy's task metric is measured.
    :param n_envs: parallel envs of the validation meta-test (default: the meta-training model's).
    :param seed: seed of the validation policy and envs: every validation starts from the same policy.
    :param net_arch: policy architecture of the validation meta-test (default: the model's).
    :param restore_best: load the best meta-loss into the model when training ends.
    :param best_meta_loss_path: if given, the best meta-loss is saved there (``ML3.save_meta_loss``
        format) whenever it improves.
    :param env_kwargs: extra env arguments (validation training and evaluation).
    :param validate_at_start: validate the initial meta-loss too, so that it is a candidate: for a loss
        that starts as a known update (``surrogate="ppo"``), meta-training then never ends worse than it began.
    """

    def __init__(
        self,
        env_id: str,
        eval_freq: int = 25_000,
        eval_at_updates: Sequence[int] = (2, 5, 10),
        n_goals: int = 10,
        n_envs: int | None = None,
        seed: int = 0,
        net_arch: Sequence[int] | None = None,
        restore_best: bool = True,
        best_meta_loss_path: str | os.PathLike | None = None,
        env_kwargs: dict[str, Any] | None = None,
        validate_at_start: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        points = [int(k) for k in eval_at_updates]
        if eval_freq < 1 or n_goals < 1 or not points or points != sorted(set(points)) or points[0] < 0:
            raise ValueError(
                f"eval_freq and n_goals must be positive and eval_at_updates increasing update counts >= 0, "
                f"got {eval_freq}, {n_goals} and {list(eval_at_updates)}."
            )
        self.env_id = env_id
        self.eval_freq = int(eval_freq)
        self.eval_at_updates = points
        self.n_goals = int(n_goals)
        self.n_envs = n_envs
        self.seed = int(seed)
        self.net_arch = None if net_arch is None else list(net_arch)
        self.restore_best = restore_best
        self.best_meta_loss_path = best_meta_loss_path
        self.env_kwargs = dict(env_kwargs or {})
        self.validate_at_start = bool(validate_at_start)
        #: (meta-train env steps, mean validation metric) of every validation
        self.history: list[tuple[int, float]] = []
        self.best_metric = -np.inf
        self.best_timesteps: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        #: env steps spent on validation (meta-test rollouts and evaluation episodes)
        self.validation_timesteps = 0
        self._last_eval = 0
        self._val_env: VecEnv | None = None
        self._goals: np.ndarray | None = None

    # ------------------------------------------------------------------ set-up
    def _init_callback(self) -> None:
        from sb3_ml3.envs import sample_tasks

        if not getattr(self.model, "meta_train", False):
            raise ValueError("MetaValidationCallback selects among meta-losses: use it with ML3(meta_train=True).")
        self._goals = sample_tasks(self.env_id, self.n_goals, "train", seed=VALIDATION_TASK_SEED)
        n_envs = self.n_envs or self.model.n_envs
        env = make_vec_env(self.env_id, n_envs=n_envs, seed=self.seed,
                           env_kwargs={**self.env_kwargs, "task_split": "train"})
        if self.model.get_vec_normalize_env() is not None:
            env = VecNormalize(env, norm_obs=True, norm_reward=False, training=False)
        self._val_env = env
        self._last_eval = self.num_timesteps

    # ------------------------------------------------------------------ hooks
    def _on_step(self) -> bool:
        return True

    def _on_training_start(self) -> None:
        if self.validate_at_start and not self.history:
            self._validate()

    def _on_rollout_start(self) -> None:
        # between iterations: phi has just taken its outer step
        if self.num_timesteps - self._last_eval >= self.eval_freq:
            self._validate()

    def _on_training_end(self) -> None:
        # the final meta-loss is a candidate too, when there is a choice to make (a run shorter than
        # eval_freq has a single candidate and spends nothing on validation)
        if self.history and self.history[-1][0] != self.num_timesteps:
            self._validate()
        if self.restore_best and self.best_state is not None:
            self.model.meta_loss.load_state_dict(self.best_state)
            if self.verbose:
                print(f"MetaValidationCallback: restored the meta-loss of step {self.best_timesteps} "
                      f"(validation metric {self.best_metric:.4g})")
        if self._val_env is not None:
            self._val_env.close()
            self._val_env = None

    # ------------------------------------------------------------------ validation
    def validate(self) -> float:
        """Meta-test a frozen copy of the current meta-loss; the mean metric on the validation goals."""
        from sb3_ml3.ml3.ml3 import ML3

        assert self._val_env is not None and self._goals is not None, "the callback is not initialised"
        model = self.model
        meta_loss = copy.deepcopy(model.meta_loss)
        train_normalize = model.get_vec_normalize_env()
        if train_normalize is not None:  # the copy sees observations as meta-training normalises them now
            meta_loss.metadata["obs_normalization"] = {
                "mean": train_normalize.obs_rms.mean.tolist(), "var": train_normalize.obs_rms.var.tolist(),
                "count": float(train_normalize.obs_rms.count)}
        settings = {name: getattr(model, name) for name in _INNER_SETTINGS}
        policy_kwargs = dict(model.policy_kwargs)
        if self.net_arch is not None:
            arch = policy_kwargs.get("net_arch")
            vf = arch.get("vf", arch.get("pi")) if isinstance(arch, dict) else arch
            policy_kwargs["net_arch"] = dict(pi=list(self.net_arch), vf=list(vf if vf is not None else [64, 64]))
        rng_state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:  # the validation seeds the global RNGs: meta-training must not notice
            # compiled where meta-training compiles: its short learn calls would not decide so themselves
            tester = ML3(model.policy_class, self._val_env, meta_train=False,
                         meta_loss=meta_loss, seed=self.seed, policy_kwargs=policy_kwargs, device=model.device,
                         compile_inner_step=bool(getattr(model, "_compiling", False)), **settings)
            rollout = tester.n_steps * tester.n_envs
            values, done = [], 0
            for k in self.eval_at_updates:
                if k > done:  # k - done more updates (SB3 updates once per rollout)
                    tester.learn((k - done) * rollout, reset_num_timesteps=done == 0)
                    done = k
                metric, steps = evaluate_task_metric(
                    tester, self.env_id, self._goals, seed=VALIDATION_TASK_SEED, env_kwargs=self.env_kwargs,
                    vec_normalize=tester.get_vec_normalize_env(), return_steps=True)
                values.append(float(np.mean(metric)))
                self.validation_timesteps += int(steps)
        finally:
            random.setstate(rng_state[0])
            np.random.set_state(rng_state[1])
            torch.set_rng_state(rng_state[2])
        self.validation_timesteps += int(tester.num_timesteps)
        return float(np.mean(values))

    def _validate(self) -> None:
        self._last_eval = self.num_timesteps
        metric = self.validate()
        self.history.append((int(self.num_timesteps), metric))
        improved = metric > self.best_metric
        if improved:
            self.best_metric = metric
            self.best_timesteps = int(self.num_timesteps)
            self.best_state = {k: v.detach().clone() for k, v in self.model.meta_loss.state_dict().items()}
            if self.best_meta_loss_path is not None:
                self.model.save_meta_loss(self.best_meta_loss_path)
        self.logger.record("eval/meta_validation_metric", metric)
        self.logger.record("eval/best_meta_validation_metric", self.best_metric)
        self.logger.record("eval/validation_timesteps", self.validation_timesteps)
        if self.verbose:
            print(f"meta-validation at {self.num_timesteps} steps: {metric:.4g}" + (" (new best)" if improved else ""))


__all__ = ["MetaValidationCallback", "VALIDATION_TASK_SEED"]
