"""The two updates of model-free ML3: the inner step on M_phi and the outer step on L_T.

:class:`LearnedLossUpdates` is the part of :class:`sb3_ml3.ml3.ML3` that turns a rollout into updates
(the algorithm's loop and settings stay in ``ml3.py``, its files in ``persistence.py``).

At meta-train (Algorithm 4), iteration i collects tau_i with theta_i; ``train()`` then

1. *outer step* for the previous update: theta_i(phi) is recomputed from theta_{i-1} and the stored
   minibatches of tau_{i-1} with :func:`sb3_ml3.functional.inner_update` (differentiable in phi),
   and phi takes a step on the REINFORCE task loss of the updated policy on its own rollout
   (Eq. 7-8)::

       L_T(phi) = - mean_{(s, a) in tau_i} [ w(s, a) * log pi_{theta_i(phi)}(a | s) ]

   with w the GAE advantage (value head as baseline, ``task_loss="advantage"``) or the centred
   discounted return (``task_loss="return"``). With ``task_clip_range`` the task loss is PPO's clipped
   surrogate of the same weights (same gradient at the behaviour policy), which lets ``meta_epochs``
   outer steps reuse one rollout. A non-finite L_T or meta-gradient is skipped, counted
   (``train/skipped_meta_steps``) and never written into phi;
2. *inner step* on tau_i with the updated phi: theta_{i+1} = theta_i - alpha grad M_phi (the same
   code path as meta-test), remembering theta_i and the minibatches for the next outer step;
3. every ``policy_reset_interval`` iterations the actor is re-initialised (Algorithm 4, line 4), so
   the loss keeps learning to train fresh policies.

With several minibatches per rollout, the meta-gradient is first-order through the unroll by
default (``first_order=True``; exact for a single minibatch step), see
:func:`sb3_ml3.functional.inner_update`.

:meth:`~LearnedLossUpdates.outer_gradient` computes the outer step's gradient without applying it, for a
driver that averages several (:mod:`sb3_ml3.distributed`). The inner step is also meta-test's only
update (Algorithm 5, line 4).

A policy the learned loss made non-finite is never kept, and a non-finite task loss or meta-gradient never
reaches phi: both are skipped and counted.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.utils import explained_variance
from torch.func import functional_call

from sb3_ml3.functional import Params, apply_meta_gradient, meta_gradient
from sb3_ml3.ml3.inner_step import InnerStep
from sb3_ml3.ml3.task_losses import ImitationTaskLoss, QValueTaskLoss, clip_actions, fit_regression
from sb3_ml3.traced import traced_meta_gradient


class LearnedLossUpdates(InnerStep):
    """Mixin of :class:`~sb3_ml3.ml3.ML3`: the meta-loss inputs, the inner and the outer step.

    It reads the algorithm's attributes (``policy``, ``rollout_buffer``, ``meta_loss``, ``inputs``, ``objective``,
    ``inner_rule``, the settings) and keeps the counters of updates and of skipped steps.
    """

    # ------------------------------------------------------------------ task losses
    @property
    def task_value_net(self) -> torch.nn.Module | None:
        return None if self.task_value is None else self.task_value.net

    @property
    def task_value_optimizer(self) -> torch.optim.Optimizer | None:
        return None if self.task_value is None else self.task_value.optimizer

    @property
    def task_q_net(self) -> torch.nn.Module | None:
        return self.objective.q_net if isinstance(self.objective, QValueTaskLoss) else None

    @property
    def task_q_optimizer(self) -> torch.optim.Optimizer | None:
        return self.objective.optimizer if isinstance(self.objective, QValueTaskLoss) else None

    def expert_actions(self, observations: torch.Tensor) -> torch.Tensor:
        """a_E(s): the expert's deterministic actions, clipped to the action bounds (``task_objective="imitation"``)."""
        assert isinstance(self.objective, ImitationTaskLoss)
        return self.objective.expert_actions(observations)

    def clip_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions clipped to the action space's bounds, as the env receives them (differentiable inside)."""
        return clip_actions(actions, self.action_space)

    # ------------------------------------------------------------------ meta-loss inputs
    def rollout_tensors(self) -> dict[str, torch.Tensor]:
        """The last rollout's valid samples as flat tensors (env-major, like SB3's minibatches), among them
        ``task_weights``: the "advantage" meta-input and the default task weight. Public so that what a
        learned loss reads can be rebuilt outside ``train`` (e.g. :meth:`meta_loss_fields` on a rollout)."""
        buffer = self.rollout_buffer
        buffer.policy_age = self._actor_age  # no inner update ran between the collection and here
        per_minibatch = self.normalize_advantage == "minibatch"
        buffer.compute_task_weights(self.task_loss, bool(self.normalize_advantage) and not per_minibatch)
        data = buffer.tensors()
        if per_minibatch:  # the minibatches get theirs in _minibatches; the task loss's are per rollout
            data["task_weights"] = _standardized(data["task_weights"])
        return data

    def meta_loss_fields(self, params: Params | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named meta-loss inputs of the policy ``params`` (``None``: the live one) on a minibatch.

        ``batch`` needs ``observations`` and whatever else ``meta_inputs`` read (``actions`` for "action",
        ``task_weights`` for "advantage", ...). Public so that what a learned loss sees can be inspected, e.g.
        its quadratic target for the policy mean (:meth:`sb3_ml3.MetaLoss.quadratic_form`).
        """
        mean, std = self.policy.actor_mean_std(params, batch["observations"])
        return self.inputs.fields(batch, mean, std)

    def learned_loss(self, params: Params | None, meta_params: Params | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L_learned(theta, phi) = mean M_phi(s, a, mu_theta(s), sigma_theta, g) over a minibatch (Eq. 2-3).

        ``None`` for either parameter set uses the live module's parameters.
        """
        fields = self.meta_loss_fields(params, batch)
        if meta_params is None:
            return self.meta_loss(fields).mean()
        return functional_call(self.meta_loss, meta_params, (fields,)).mean()

    def _task_reward_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The task-loss weights of ``task_reward``, flat and normalised, and the task critic's targets.

        See :meth:`ML3RolloutBuffer.task_reward_weights`: rewards-to-go without ``task_critic``, GAE under
        V_task with it.
        """
        buffer = self.rollout_buffer
        values = last_values = None
        if self.task_value is not None:
            values = self.task_value.values(buffer.grid("observations"))  # (n_steps, n_envs)
            last_values = self.task_value.values(self._last_obs)
        weights, targets = buffer.task_reward_weights(self.gamma, self.gae_lambda, self.normalize_advantage, values,
                                                      last_values, np.asarray(self._last_episode_starts, dtype=np.float64))
        return buffer.flat(weights), None if targets is None else buffer.flat(targets)

    @property
    def task_loss_fn(self) -> Any:
        """The task loss L_T(params, data) the outer step differentiates (``task_objective``)."""
        return self.objective.loss

    # ------------------------------------------------------------------ training
    def _minibatches(self) -> list[dict[str, torch.Tensor]]:
        """``n_epochs`` shuffled passes over the rollout's valid samples in minibatches (the buffer's), their
        ``task_weights`` normalised per minibatch with ``normalize_advantage="minibatch"`` (as SB3's PPO)."""
        minibatches = self.rollout_buffer.minibatches(self.batch_size, self.n_epochs)
        if self.normalize_advantage == "minibatch":
            for batch in minibatches:
                batch["task_weights"] = _standardized(batch["task_weights"])
        return minibatches

    def _pull_learning_rate(self, inner_lr: float) -> float:
        """The inner step size of this update: the meta-loss's ``pull_learning_rate`` while its pull acts on the live
        policy (``actor_age < pull_updates``, as the pull's gate reads the rollout's ``policy_age``), written into the
        policy optimizer, else ``inner_lr``, the schedule's value that SB3 has already written there."""
        rate = self.meta_loss.pull_learning_rate
        if rate is None or self._actor_age >= self.meta_loss.pull_updates:
            return inner_lr
        for group in self.policy.optimizer.param_groups:
            group["lr"] = rate
        self.logger.record("train/pull_learning_rate", rate)
        return rate

    # ------------------------------------------------------------------ the halves of train()
    def prepare_rollout(self) -> dict[str, torch.Tensor] | None:
        """The last rollout as the tensors both steps read (:meth:`rollout_tensors`, ``task_reward``'s weights,
        what the task loss needs), counted as an iteration; ``None`` (logged) when non-finite rewards left fewer
        valid samples than a minibatch, and then no outer step awaits any more."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer if self.vf_coef is None
                                   else [self.policy.optimizer, self.value_optimizer])
        task_value_targets = task_loss_weights = None
        if self.meta_train and self.task_reward is not None:
            task_loss_weights, task_value_targets = self._task_reward_weights()
        data = self.rollout_tensors()
        if task_loss_weights is not None:
            data["task_loss_weights"] = task_loss_weights
        if task_value_targets is not None:
            data["task_value_targets"] = task_value_targets
        if data["observations"].shape[0] < self.batch_size:
            self._pending = None
            self.logger.record("train/invalid_samples", self.rollout_buffer.n_invalid)
            self.logger.record("train/skipped_rollouts", 1)
            return None
        if self.meta_train:
            self.objective.prepare(data)  # e.g. the expert's actions at the rollout's states
        self._n_iterations += 1
        return data

    def inner_update(self, data: dict[str, torch.Tensor], stats: dict[str, float] | None = None) -> None:
        """The inner half of ``train()`` on the rollout :meth:`prepare_rollout` returned (still in the buffer):
        the policy reset or inner step (Eq. 2) with the current phi, the task critics, the critic, and the logs
        (``stats``: what the outer step reported, logged under ``train/``). Any pending outer step is dropped:
        the inner step remembers its own."""
        stats = dict(stats or {})
        self._pending = self._trace = None
        inner_lr = self._pull_learning_rate(float(self.lr_schedule(self._current_progress_remaining)))
        reset = (self.meta_train and self.policy_reset_interval is not None
                 and self._n_iterations % self.policy_reset_interval == 0)
        frozen = self.policy_frozen
        if reset:
            self._reset_actor()  # Alg. 4 line 4: the next rollout comes from a fresh theta_0 and inner optimizer
        elif not frozen:
            stats.update(self._update_policy(data, inner_lr))
        task_value_targets = data.get("task_value_targets")
        if task_value_targets is not None:
            assert self.task_value is not None
            self.logger.record("train/task_value_loss", self.task_value.fit(data, task_value_targets))
            for key, value in self.objective.fit(data, task_value_targets).items():
                self.logger.record(f"train/{key}", value)
        if frozen:
            self.logger.record("train/policy_frozen", 1)
        elif self.critic_needed:
            if self.vf_coef is None:
                self.logger.record("train/value_loss", self._train_critic(data))
            elif "value_loss" in stats:  # trained with the actor, in the inner steps
                self.logger.record("train/value_loss", stats.pop("value_loss"))
            self.logger.record("train/explained_variance", explained_variance(
                self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()))
        self._n_updates += 1
        for key, value in stats.items():
            self.logger.record(f"train/{key}", value)
        self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if self.meta_train:
            self.logger.record("train/n_meta_updates", self._n_meta_updates)
            self.logger.record("train/skipped_meta_steps", self.skipped_meta_steps)
            self.logger.record("train/policy_reset", int(reset))
        self.logger.record("train/skipped_inner_steps", self.skipped_inner_steps)
        self.logger.record("train/invalid_samples", self.rollout_buffer.n_invalid)

    def _train_critic(self, data: dict[str, torch.Tensor]) -> float:
        """Regress the value head on the env reward's GAE returns (it supplies the advantages)."""
        return fit_regression(self.policy.predict_values, (data["observations"],), data["returns"],
                              self.value_optimizer, self.n_epochs, self.batch_size)

    def _clipped_learned_loss(self, params: Params | None, meta_params: Params | None,
                              batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The learned loss times the minibatch's recorded joint clip factor (``vf_coef`` set), whose gradient is
        the clipped step the live update took; the factor is a constant for the outer step."""
        loss = self.learned_loss(params, meta_params, batch)
        return loss * batch["clip_scale"] if "clip_scale" in batch else loss

    def outer_gradient(self, data: dict[str, torch.Tensor], phi: Params | None = None) -> tuple[Params, torch.Tensor]:
        """grad_phi L_T(theta_i(phi)) and L_T on the rollout ``data`` of theta_i, without touching phi.

        First order, at the phi of the live update and with ``traced_outer_step`` set (the default), it reuses
        the points and gradients that update recorded (:func:`sb3_ml3.traced.traced_meta_gradient`: one batched
        pass); otherwise theta_i(phi) is recomputed from the pending inner update (theta_{i-1} and its
        minibatches) with :func:`sb3_ml3.functional.meta_gradient`. Both give the same gradient up to float
        rounding. A later outer step on the same rollout (``meta_epochs > 1``) first reruns the update at the
        new phi (:meth:`retrace`) so that it can take the traced path too. ``phi`` defaults to the live meta-loss's parameters; a
        distributed driver passes its own and averages what its workers return.
        """
        assert self._pending is not None, "no inner update awaits its outer step"
        params, minibatches, inner_lr, optimizer_state = self._pending
        live_phi = phi is None
        if live_phi:
            phi = {name: p.detach() for name, p in self.meta_loss.named_parameters()}
        if (self.traced_outer_step and live_phi and self.meta_epochs > 1
                and (self._trace is None or not self._trace.valid_for(phi))):
            self._trace = self.retrace()  # a later outer step on this rollout: rerun the update at the new phi
        if self.traced_outer_step and self._trace is not None and self._trace.valid_for(phi):
            try:
                return traced_meta_gradient(self.learned_loss, self.task_loss_fn, self._trace, phi, data)
            except (RuntimeError, NotImplementedError) as error:  # e.g. an operation vmap cannot batch
                self.traced_outer_step = False
                warnings.warn(f"ML3: the traced outer step failed ({error}); recomputing the inner update instead.",
                              RuntimeWarning, stacklevel=2)
        joint = self.vf_coef is not None  # the clip is the live step's, recorded per minibatch
        return meta_gradient(
            self._clipped_learned_loss if joint else self.learned_loss, self.task_loss_fn, params, phi,
            minibatches, data, inner_lr, first_order=self.first_order,
            max_grad_norm=None if joint else self.max_grad_norm,
            optimizer=self.inner_rule, optimizer_state=optimizer_state,
        )

    def outer_step(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        """phi <- phi - eta grad_phi L_T(theta_i(phi)) on the rollout of theta_i (Eq. 5-8, Alg. 4 line 13).

        ``meta_epochs`` such steps, each recomputing theta_i(phi) with the current phi; the logged task loss
        and meta-gradient norm are the first step's (the loss of the policy that collected the rollout).
        """
        assert self._pending is not None and self.meta_optimizer is not None
        first: dict[str, float] = {}
        for _ in range(self.meta_epochs):
            grads, value = self.outer_gradient(data)
            result = apply_meta_gradient(self.meta_optimizer, self.meta_loss, grads, value, self.meta_max_grad_norm)
            if not first:
                first = {"task_loss": result.task_loss, "meta_grad_norm": result.grad_norm}
            if result.applied:
                self._n_meta_updates += 1
            else:
                self.skipped_meta_steps += 1
                if self.verbose:
                    print(f"ML3: skipped a meta-step ({result.reason}); phi unchanged")
                break
        return first

    @property
    def n_iterations(self) -> int:
        """Rollouts trained on so far (``train()`` calls): the age counter of ``policy_reset_interval``."""
        return self._n_iterations

    @property
    def n_meta_updates(self) -> int:
        """Outer steps applied to phi (skipped ones are counted in ``skipped_meta_steps``)."""
        return self._n_meta_updates

    @property
    def actor_age(self) -> int:
        """Inner updates the live policy has had since it was initialised or last reset (the ``policy_age`` input)."""
        return self._actor_age

    @property
    def n_policy_updates(self) -> int:
        """Inner updates of the policy (each ``n_epochs`` passes over a rollout)."""
        return self._n_policy_updates

    @property
    def has_pending_outer_step(self) -> bool:
        """Whether the last inner update awaits its outer step (it is kept in a saved file)."""
        return self._pending is not None

    @property
    def policy_frozen(self) -> bool:
        """Whether meta-test has made its ``max_policy_updates`` updates: the policy no longer changes."""
        return (not self.meta_train and self.max_policy_updates is not None
                and self._n_policy_updates >= self.max_policy_updates)

    @property
    def critic_needed(self) -> bool:
        """Whether the value head is used: by the task loss (meta-train) or by advantage/return inputs.

        A frozen loss that reads neither never needs it, so meta-test then skips the critic's regression.
        """
        return self.meta_train or any(name in self.meta_inputs for name in ("advantage", "return"))


def _standardized(weights: torch.Tensor) -> torch.Tensor:
    """(w - mean) / (std + 1e-8) with the unbiased std, as SB3's PPO normalises advantages."""
    if weights.numel() < 2:
        return weights
    return (weights - weights.mean()) / (weights.std() + 1e-8)
