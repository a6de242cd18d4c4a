"""The live inner step of model-free ML3 (Eq. 2; Algorithm 5 line 4), shared by meta-test and meta-train.

:class:`InnerStep` is the part of :class:`sb3_ml3.ml3.ML3` that updates the policy on a rollout with the learned
loss: the minibatch steps of ``policy.optimizer`` (SGD, or Adam for a loss in PPO's family), PPO's joint critic
step and gradient clip with ``vf_coef``, the guard against non-finite losses and policies, and, at meta-train,
what the outer step needs: the pending update (``_pending``, to recompute it) and its trace (``_trace``: the
points, raw gradients and clip factors that :func:`sb3_ml3.traced.traced_meta_gradient` reuses).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from sb3_ml3.compiled import CompiledOrEager
from sb3_ml3.functional import Adam, clip_factor, clip_factor_slope
from sb3_ml3.ml3.policies import gaussian_kl
from sb3_ml3.traced import InnerTrace


#: ``ML3(compile_inner_step="auto")`` compiles the inner step for ``learn`` calls of at least this many steps:
#: its one-off ~16 s (cold) is then a few percent of the run, and the compiled step saves more than that
COMPILE_FROM_STEPS = 200_000


class InnerStep:
    """Mixin of :class:`~sb3_ml3.ml3.ML3`: the inner step on the learned loss and its bookkeeping."""

    def inner_step(self, minibatches: list[dict[str, torch.Tensor]], trace: InnerTrace | None = None) -> dict[str, float]:
        """theta <- theta - alpha grad_theta L_learned on each minibatch, in place (Eq. 2; Alg. 5 line 4).

        Used by both meta-test and meta-train, so the update a learned loss is trained for is the update
        it performs: ``policy.optimizer`` (SGD, or Adam with ``inner_optimizer="adam"``) takes the step that
        :class:`~sb3_ml3.functional.InnerOptimizer` recomputes in the outer step. With ``vf_coef`` the critic
        takes its step on ``vf_coef`` x MSE in the same minibatch, under one gradient clip with the actor
        (PPO's update); each minibatch then records its clip factor (``clip_scale``) for the outer step. A
        non-finite learned loss or gradient skips that minibatch (counted and logged). ``trace`` records each
        step's point, raw gradient and clip factor for the outer step (:mod:`sb3_ml3.traced`).
        """
        named = self.policy.actor_parameters()
        actor = list(named.values())
        critic = self._joint_critic()
        # one backward pass for actor and critic where the critic's loss cannot reach an actor parameter
        fused = bool(critic) and not (self.policy.share_features_extractor
                                      and any(True for _ in self.policy.features_extractor.parameters()))
        losses, norms, value_losses = [], [], []
        minibatch_losses = self._minibatch_losses_function()
        for batch in minibatches:
            loss, value_loss = minibatch_losses(batch)
            if fused:
                both = torch.autograd.grad(loss + value_loss, actor + critic)
                grads, critic_grads = list(both[:len(actor)]), list(both[len(actor):])
                all_norms = torch.stack(torch._foreach_norm(grads + critic_grads))  # one kernel for every norm
                actor_norms = all_norms[:len(actor)]
            else:
                grads = list(torch.autograd.grad(loss, actor))
                actor_norms = torch.stack(torch._foreach_norm(grads))
            norm = torch.linalg.vector_norm(actor_norms)
            if not bool(torch.isfinite(loss) & torch.isfinite(norm)):
                self.skipped_inner_steps += 1
                continue
            clip_norm = norm
            raw = grads
            if critic:
                if fused:  # PPO clips the whole policy's gradient at once
                    clip_norm = torch.linalg.vector_norm(all_norms)
                else:
                    critic_grads = list(torch.autograd.grad(value_loss, critic))
                    clip_norm = torch.linalg.vector_norm(
                        torch.cat([actor_norms, torch.stack(torch._foreach_norm(critic_grads))]))
            scale, slope = None, 0.0
            if self.max_grad_norm is not None:  # the rescaling functional.clip_grads applies
                scale = clip_factor(clip_norm, self.max_grad_norm)
                if not critic:  # d scale / d norm: the actor's own norm depends on phi
                    slope = clip_factor_slope(float(norm), self.max_grad_norm)
                grads = torch._foreach_mul(grads, scale)
                if critic:
                    critic_grads = torch._foreach_mul(critic_grads, scale)
                    batch["clip_scale"] = scale.detach()
            if trace is not None:  # before the step: the point is the parameters it starts from
                trace.record({name: p.detach().clone() for name, p in named.items()}, batch, dict(zip(named, raw)),
                             1.0 if scale is None else float(scale), slope)
            self.inner_rule.apply_(self.policy.optimizer, actor, grads)  # Eq. 2 (SGD) or its Adam variant
            if critic:
                self.inner_rule.apply_(self.value_optimizer, critic, critic_grads)
                value_losses.append(value_loss.detach() / self.vf_coef)
            losses.append(loss.detach())
            norms.append(norm)
        stats = {
            "meta_loss": torch.stack(losses).mean().item() if losses else float("nan"),
            "inner_grad_norm": torch.stack(norms).mean().item() if norms else float("nan"),
        }
        if value_losses:
            stats["value_loss"] = torch.stack(value_losses).mean().item()
        return stats

    def retrace(self) -> InnerTrace | None:
        """The pending inner update run again at the current phi, recording its trace; the live policy is kept.

        With ``meta_epochs > 1`` phi changes between the outer steps on one rollout, and a trace serves only the
        phi it was recorded at. Running the update again (the same minibatches, from the same parameters and
        optimizer states) costs one inner update; the eager alternative unrolls it under ``torch.func``. The
        minibatches keep the clip factors of this run (PPO's joint clip), which an eager outer step then uses
        too. ``None`` when there is nothing to rerun or a minibatch was skipped.
        """
        start = self.__dict__.get("_retrace_start")
        if self._pending is None or start is None:
            return None
        before, minibatches, inner_lr, optimizer_state = self._pending
        critic_before, value_state = start
        named = self.policy.actor_parameters()
        critic = self._joint_critic()
        live_params = [p.detach().clone() for p in list(named.values()) + critic]
        live_optimizer = copy.deepcopy(self.policy.optimizer.state_dict())
        live_value_optimizer = copy.deepcopy(self.value_optimizer.state_dict()) if critic else None
        skipped = self.skipped_inner_steps
        try:
            self.policy.load_actor_parameters(before)
            self._restore_optimizer_state(optimizer_state, {p: n for n, p in named.items()})
            with torch.no_grad():
                for p, value in zip(critic, critic_before):
                    p.copy_(value)
            if critic:
                self.value_optimizer.load_state_dict(value_state)
            phi = {name: p.detach().clone() for name, p in self.meta_loss.named_parameters()}
            trace = InnerTrace(self.inner_rule, inner_lr, optimizer_state, phi)
            self.inner_step(minibatches, trace)
            if len(trace.points) != len(minibatches):
                return None
            trace.final = {name: p.detach().clone() for name, p in named.items()}
            return trace
        finally:
            with torch.no_grad():
                for p, value in zip(list(named.values()) + critic, live_params):
                    p.copy_(value)
            self.policy.optimizer.load_state_dict(live_optimizer)
            if critic:
                self.value_optimizer.load_state_dict(live_value_optimizer)
            self.skipped_inner_steps = skipped

    def _reset_actor(self) -> None:
        """A fresh theta_0 with a fresh inner optimizer and age 0 (meta-training's policy reset)."""
        self.policy.reset_actor()
        self.policy.optimizer.state.clear()
        self._actor_age = 0

    def _joint_critic(self) -> list[torch.nn.Parameter]:
        """The critic's parameters where they take their step inside the inner update (``vf_coef``), else none."""
        return self.policy.critic_parameters() if self.vf_coef is not None else []

    def minibatch_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What one inner step differentiates: the learned loss on ``batch`` and, with ``vf_coef`` (PPO's joint
        update), ``vf_coef`` x the critic's MSE to the returns (``None`` without)."""
        loss = self.learned_loss(None, None, batch)
        if self.vf_coef is None:
            return loss, None
        values = self.policy.predict_values(batch["observations"]).flatten()
        return loss, self.vf_coef * torch.nn.functional.mse_loss(values, batch["returns"])

    def _minibatch_losses_function(self) -> Any:
        """:meth:`minibatch_losses`, through ``torch.compile`` when ``compile_inner_step`` says so for this ``learn``
        call (one wrapper per model)."""
        if not self.__dict__.get("_compiling", False):
            return self.minibatch_losses
        compiled = self.__dict__.get("_compiled_minibatch_losses")
        if compiled is None:
            compiled = self._compiled_minibatch_losses = CompiledOrEager(self.minibatch_losses)
        return compiled

    def _restore_optimizer_state(self, state: Any, names: dict[torch.Tensor, str]) -> None:
        """Put back the inner optimizer's state from before a rejected update (Adam's moments; SGD has none)."""
        self.policy.optimizer.state.clear()
        if state is None or not isinstance(self.inner_rule, Adam):
            return
        step, exp_avg, exp_avg_sq = state
        for p, name in names.items():
            self.policy.optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": exp_avg[name].clone(),
                                              "exp_avg_sq": exp_avg_sq[name].clone()}

    def _update_policy(self, data: dict[str, torch.Tensor], inner_lr: float) -> dict[str, float]:
        """The inner step on the rollout (Eq. 2), remembered for the next outer step at meta-train.

        A policy the learned loss made non-finite is never kept: meta-train starts a fresh one, meta-test
        puts the previous one (and its inner optimizer's state) back.
        """
        self._n_policy_updates += 1
        minibatches = self._minibatches()
        named = self.policy.actor_parameters()
        before = {name: p.detach().clone() for name, p in named.items()}
        with torch.no_grad():
            old_mean, old_std = self.policy.actor_mean_std(None, data["observations"])
        names = {p: n for n, p in named.items()}
        optimizer_state = self.inner_rule.from_torch(self.policy.optimizer, names)
        trace = None
        self._retrace_start = None
        if self.meta_train:
            self._pending = (before, minibatches, inner_lr, optimizer_state)
            if self.meta_epochs > 1 and self.first_order:  # what retrace() restarts the update from
                critic = self._joint_critic()
                self._retrace_start = ([p.detach().clone() for p in critic],
                                       copy.deepcopy(self.value_optimizer.state_dict()) if critic else None)
            if self.first_order:
                phi = {name: p.detach().clone() for name, p in self.meta_loss.named_parameters()}
                trace = InnerTrace(self.inner_rule, inner_lr, optimizer_state, phi)
        stats = self.inner_step(minibatches, trace)
        if trace is not None and len(trace.points) == len(minibatches):  # complete: no minibatch was skipped
            trace.final = {name: p.detach().clone() for name, p in named.items()}
            self._trace = trace
        if not all(torch.isfinite(p).all() for p in named.values()):
            self.skipped_inner_steps += 1
            self._pending = self._trace = None
            if self.meta_train:
                self._reset_actor()
            else:
                self.policy.load_actor_parameters(before)
                self._restore_optimizer_state(optimizer_state, names)
        else:
            self._actor_age += 1
        with torch.no_grad():
            new_mean, new_std = self.policy.actor_mean_std(None, data["observations"])
            stats["approx_kl"] = gaussian_kl(old_mean, old_std, new_mean, new_std).mean().item()
        return stats
