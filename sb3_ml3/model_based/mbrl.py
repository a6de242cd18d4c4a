"""Model-based ML3 (paper Sec. III.B.1 and IV.A.2, Algorithms 3 and 5, Fig. 3): ``ml3 mbrl``.

**Meta-train (Algorithm 3).** A dynamics model P (:class:`~.dynamics.EnsembleDynamics`) is fitted to
real transitions of random actions. Each outer iteration draws B train goals and fresh policies theta_0
and takes K inner steps, each on a trajectory tau_k unrolled in P:

    tau_k = unroll(pi_theta_k, P)                           states s_t as data (no gradient)
    theta_k+1 = theta_k - alpha(tau_k, g) grad_theta M_phi(tau_k, g)
    M_phi(tau, g) = mean_t M(features(s_t, g), pi_theta(s_t, g))   actions re-evaluated by the policy

The task loss is the distance to the goal at the last step when pi_theta_k+1 is unrolled in P,
differentiated through P, the policy and the inner update (mean over the K steps, Alg. 4's
E[L_T^i]); phi <- phi - eta grad_phi L_T (Adam). Optionally (``minimiser_weight``, ours) L_T also scores the loss's
minimiser t(c) unrolled in P as a controller, where many inner steps lead; with ``loss_outcome`` M also reads where
tau_k ended relative to the goal (real feedback at meta-test). Every ``model_every`` outer iterations
(Appendix A: 100) the latest updated policies are rolled out on the real env and P is refitted on all data.

**Meta-test (Algorithm 5) needs no model.** Each update rolls the policy out in the *real* env (no
gradient through it), records the states, re-evaluates the actions pi_theta(s_t, g) and steps on
M_phi: the same form as the inner step of meta-training, with real states in place of P's. The
baselines start from the same initial policies and optimise the task loss (final distance, summed
over the goals so each policy gets its own gradient) with plain gradient descent through the learned
model P, or through the env's exact dynamics (:meth:`~.mbrl_envs.MBRLEnv.exact_step_fn`), the upper
reference (:mod:`.mbrl_baselines`), and with ``real_state_baseline`` through P along each update's real rollout (the
feedback a loss reading the outcome gets); their step size, and optionally their policy class, are tuned on train
goals. Every policy is evaluated by its real rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad_and_value

from sb3_ml3.envs import sample_tasks
from sb3_ml3.functional import Params, apply_meta_gradient, make_meta_optimizer
from sb3_ml3.model_based.dynamics import EnsembleDynamics, RealEnvs, TransitionBuffer, random_action_rollouts
from sb3_ml3.model_based.mbrl_baselines import (StepFn, optimise_task_loss, starting_policies, tune_model_baseline,
                                                 tune_task_loss)
from sb3_ml3.model_based.mbrl_config import MBRLConfig, config_dict
from sb3_ml3.model_based.mbrl_envs import (LOSS_FEATURES, OUTCOME_DIM, MBRLEnv, final_error_features, mbrl_env,
                                            with_features)
from sb3_ml3.model_based.mbrl_inner import InnerStep, make_learned_loss, state_as_tensors, state_from_tensors
from sb3_ml3.model_based.mbrl_nets import LossAndRate, PolicyBatch
from sb3_ml3.model_based.mbrl_validation import KeepBest


def unroll(step: StepFn, policy: PolicyBatch, params: Params, env: MBRLEnv, start: torch.Tensor,
           goals: torch.Tensor, horizon: int, anchor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_theta unrolled through ``step`` (P or the exact dynamics): states ``(B, H + 1, S)``, actions ``(B, H, A)``.

    ``anchor``: real states ``(B, H + 1, S)`` (``start`` is their first). Each next state then equals the anchor's in
    value and keeps ``step``'s derivatives, s_t+1 = real_t+1 + step(s_t, a_t) - stop_gradient(step(s_t, a_t)): the
    task loss along a real rollout, the model supplying only the gradient (the real-state baseline,
    :mod:`.mbrl_baselines`).
    """
    states, actions, s = [start], [], start
    for t in range(horizon):
        a = policy(params, env.features(s, goals))
        s = step(s, a)
        if anchor is not None:
            s = anchor[:, t + 1] + s - s.detach()
        states.append(s)
        actions.append(a)
    return torch.stack(states, 1), torch.stack(actions, 1)


def final_distance(env: MBRLEnv, states: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
    """Each trajectory's distance to its goal after the last step, ``(B,)``: the task loss L_T."""
    return torch.linalg.vector_norm(env.position(states[:, -1]) - goals, dim=-1)


class MBRLExperiment:
    """One seed of model-based ML3 on one env: meta-train (Alg. 3), then meta-test (Alg. 5) beside the baselines."""

    def __init__(self, env_id: str, config: MBRLConfig, seed: int, restart: int = 0) -> None:
        self.config, self.seed, self.restart = config, int(seed), int(restart)
        if config.inner_optimizer == "adam" and config.alpha_max > 1.0:
            raise ValueError(f"with inner_optimizer='adam' the learned rate is Adam's step size: alpha_max "
                             f"{config.alpha_max:g} would let it take steps of that size; use e.g. alpha_max 0.1 and "
                             "alpha_init 0.02 (--alpha-max 0.1 --alpha-init 0.02).")
        self.env = self.base_env = mbrl_env(env_id, config.horizon)  # base_env: the env's own features
        for name, choice in (("loss_features", config.loss_features), ("policy_features", config.policy_features),
                             *(("task_policy_features", c) for c in config.task_policy_features)):
            if choice != "state" and (choice not in LOSS_FEATURES or LOSS_FEATURES[choice][0] != env_id):
                raise ValueError(f"{name} {choice!r} is not defined for {env_id}: 'state' or one of "
                                 f"{[k for k, v in LOSS_FEATURES.items() if v[0] == env_id]}.")
        self.env = with_features(self.base_env, config.policy_features)  # what ML3's policies read
        self.horizon = self.env.horizon
        self.generator = torch.Generator().manual_seed(self.seed + 104_729 * self.restart)
        self.policy = PolicyBatch(self.env.feature_dim, self.env.action_dim, config.policy_hidden)
        self.loss_context, loss_dim = ((None, self.env.feature_dim) if config.loss_features == "state"
                                       else LOSS_FEATURES[config.loss_features][1:])
        loss_dim += OUTCOME_DIM if config.loss_outcome == "final-error" else 0
        self.meta_loss = LossAndRate(loss_dim, self.env.action_dim, config.meta_hidden, config.alpha_max,
                                     config.alpha_init, generator=self.generator,
                                     metadata={"env_id": env_id, "horizon": self.horizon, "seed": self.seed,
                                               "restart": self.restart,
                                               "policy_hidden": list(config.policy_hidden),
                                               "loss_features": config.loss_features,
                                               "loss_outcome": config.loss_outcome,
                                               "inner_optimizer": config.inner_optimizer},
                                     relative_target=config.relative_target, loss_form=config.loss_form,
                                     target_bound=config.target_bound,
                                     time_steps=None if config.loss_time_weights == "none" else self.horizon,
                                     time_weight_init="late" if config.loss_time_weights == "late" else "uniform")
        self.model = EnsembleDynamics(self.env.state_dim, self.env.action_dim, config.model_hidden,
                                      config.model_members, generator=self.generator)
        self.buffer = TransitionBuffer(self.env.state_dim, self.env.action_dim)
        # (restart, P) of every meta-training of this seed, when restarts ran (mbrl_cli.meta_train_with_restarts):
        # the models the task loss through the model may choose from (config.task_model_from == "restarts")
        self.restart_models: list[tuple[int, EnsembleDynamics]] = []
        self.inner = InnerStep(self.policy, self.meta_loss, config.inner_optimizer, config.adam_eps,
                               config.loss_on_pre_tanh)
        if config.policy_init not in ("fresh", "fixed"):
            raise ValueError(f"policy_init must be 'fresh' or 'fixed', got {config.policy_init!r}.")
        self.fixed_policy = (self.policy.init(1, torch.Generator().manual_seed(self.seed * 7 + 3))
                             if config.policy_init == "fixed" else None)

    def initial_policies(self, n: int, generator: torch.Generator) -> Params:
        """``n`` policies to start from: a fresh draw, or copies of the seed's fixed one (``policy_init="fixed"``)."""
        if self.fixed_policy is not None:
            return {k: v.expand(n, *v.shape[1:]).clone() for k, v in self.fixed_policy.items()}
        return self.policy.init(n, generator)

    # ------------------------------------------------------------------ data and model
    def train_goals(self, n: int, offset: int) -> np.ndarray:
        """``n`` train-split goals, seeded by this seed and ``offset`` (one offset per use)."""
        return sample_tasks(self.env.env_id, n, "train", seed=self.seed * 100_003 + offset)

    def collect_random(self) -> None:
        goals = self.train_goals(self.config.random_episodes, 1)
        roll = random_action_rollouts(self.env.env_id, goals, self.horizon, seed=self.seed * 7919,
                                      amplitude_min=self.config.random_amplitude_min)
        self.buffer.add_rollouts(roll.states, roll.actions)

    def collect_policy(self, params: Params, goals: np.ndarray, seed: int) -> float:
        """Roll the (updated) policies out on the real env, add the transitions; their mean final distance."""
        envs = RealEnvs(self.env.env_id, goals)
        try:
            roll = envs.rollout(self.actor(params), self.horizon, seed)
        finally:
            envs.close()
        self.buffer.add_rollouts(roll.states, roll.actions)
        return float(roll.final_distance.mean())

    def actor(self, params: Params, policy_class: tuple[PolicyBatch, MBRLEnv] | None = None
              ) -> Callable[[np.ndarray], np.ndarray]:
        """The policies as a function of the real env's observations ``(B, state + goal)`` (one row per policy);
        ``policy_class``: (policies, env description) of another class (:func:`.mbrl_baselines.policy_class`)."""
        detached = {k: v.detach() for k, v in params.items()}
        policy, env = policy_class or (self.policy, self.env)
        return self._controller(lambda s, g: policy(detached, env.features(s, g)))

    def minimiser_actor(self) -> Callable[[np.ndarray], np.ndarray]:
        """M_phi's minimiser t(c) (:meth:`~.mbrl_nets.LossAndRate.minimiser`) as a controller of the real env (read on
        target where the loss reads the outcome, as in :meth:`minimiser_distance`)."""
        return self._controller(lambda s, g: self.meta_loss.minimiser(self.contexts(s[:, None], g)[1])[:, 0])

    def _controller(self, act: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> Callable[[np.ndarray], np.ndarray]:
        """``act(states (B, S), goals (B, 2)) -> actions`` as a function of the real env's observations, no gradient."""
        s_dim = self.env.state_dim

        def control(obs: np.ndarray) -> np.ndarray:
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                return act(obs_t[:, :s_dim], obs_t[:, s_dim:s_dim + 2]).numpy()

        return control

    def contexts(self, states: torch.Tensor, goals: torch.Tensor, final: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the policy's features, M_phi's context) of trajectories' states ``(B, T, S)`` and goals ``(B, 2)``.

        With ``loss_outcome="final-error"`` the context also reads where each trajectory ended, ``final`` ``(B, S)``
        (:func:`~.mbrl_envs.final_error_features`); ``final=None`` reads as a trajectory that ends on its goal."""
        g = goals[:, None].expand(-1, states.shape[1], -1)
        features = self.env.features(states, g)
        context = features if self.loss_context is None else self.loss_context(states, g)
        if self.config.loss_outcome == "final-error":
            context = torch.cat([context, final_error_features(self.env.env_id, states, final, goals)], -1)
        return features, context

    # ------------------------------------------------------------------ Algorithm 3
    def meta_objective(self, phi: Params, theta: Params, start: torch.Tensor, goals: torch.Tensor,
                       state: dict[str, Any] | None = None
                       ) -> tuple[torch.Tensor, tuple[Params, torch.Tensor, dict[str, Any]]]:
        """L_T = mean_k mean_b |position(s_H) - g| after each of the K inner steps, a function of phi (with
        ``task_loss_steps`` n > 1: the mean over the last n states s_H-n+1..s_H; plus ``final_speed_weight`` times
        the mean speed |v_H| of the last state). ``state``: the inner rule's state of these policies
        (:func:`~.mbrl_inner.state_as_tensors`); the aux holds theta_K, the rates and the state after the K steps."""
        losses, alphas, rule_state = [], [], state_from_tensors(state or {})
        for _ in range(self.config.inner_steps):
            with torch.no_grad():  # tau_k: the states are data, as they are at meta-test
                states, recorded = unroll(self.model, self.policy, {k: v.detach() for k, v in theta.items()},
                                          self.env, start, goals, self.horizon)
            features, context = self.contexts(states[:, :-1], goals, states[:, -1])
            theta, alpha, rule_state = self.inner(theta, phi, features, recorded, rule_state, context)
            alphas.append(alpha)
            states, _ = unroll(self.model, self.policy, theta, self.env, start, goals, self.horizon)
            n = min(self.config.task_loss_steps, self.horizon)
            last = states[:, -n:]
            loss = torch.linalg.vector_norm(self.env.position(last) - goals[:, None], dim=-1).mean()
            if self.config.final_speed_weight:
                speed = torch.linalg.vector_norm(states[:, -1, 2:4], dim=-1).mean()
                loss = loss + self.config.final_speed_weight * speed
            losses.append(loss)
        objective = torch.stack(losses).mean()
        if self.config.minimiser_weight:
            objective = objective + self.config.minimiser_weight * self.minimiser_distance(phi, start, goals).mean()
        return objective, ({k: v.detach() for k, v in theta.items()}, torch.stack(alphas).detach(),
                                            state_as_tensors(rule_state))

    def minimiser_distance(self, phi: Params, start: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """Final distance ``(B,)`` of M_phi's minimiser t(c) unrolled in P as a controller, differentiable in phi (a
        loss that reads the outcome, ``loss_outcome``, is read on target: the final error it sees is zero)."""
        s = start
        for _ in range(self.horizon):
            context = self.contexts(s[:, None], goals)[1]
            s = self.model(s, functional_call(self.meta_loss, phi, (context,))[:, 0])
        return torch.linalg.vector_norm(self.env.position(s) - goals, dim=-1)

    def meta_param_groups(self) -> list[dict[str, Any]]:
        """phi's parameter groups for the outer Adam: the per-step weights' logs get their own step size
        (``time_weight_lr``) where one is set, everything else steps at ``meta_lr``."""
        lr = self.config.time_weight_lr
        if lr is None:
            return [{"params": list(self.meta_loss.parameters())}]
        weights = self.meta_loss.log_time_weight
        rest = [p for p in self.meta_loss.parameters() if p is not weights]
        return [{"params": rest}, {"params": [weights], "lr": lr}]

    def meta_train(self, progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
        cfg = self.config
        start_time = time.time()
        self.collect_random()
        for p in self.model.parameters():
            p.requires_grad_(True)
        fit_loss = self.model.fit(self.buffer, cfg.model_epochs, generator=self.generator)
        model_log = [{"outer": 0, "transitions": len(self.buffer), "fit_loss": fit_loss,
                      "one_step_rmse": self.model.one_step_error(self.buffer)}]
        for p in self.model.parameters():
            p.requires_grad_(False)
        optimizer = make_meta_optimizer(self.meta_param_groups(), cfg.meta_lr)
        objective = grad_and_value(self.meta_objective, has_aux=True)
        history, skipped, alpha_trace = [], 0, []
        reset_seed = self.seed * 31 + 5
        theta: Params = {}
        rule_state: dict[str, Any] = {}  # the inner rule's state (Adam's), as long as the policies live
        keeper = KeepBest(self, cfg.val_every, cfg.val_updates)
        keeper(0)
        for outer in range(1, cfg.n_outer + 1):
            if (outer - 1) % cfg.policy_reset_every == 0 or not all(bool(v.isfinite().all()) for v in theta.values()):
                goals_np = self.train_goals(cfg.batch_goals, 10 + outer)  # fresh goals and policies
                goals = torch.as_tensor(goals_np, dtype=torch.float32)
                theta, rule_state = self.initial_policies(cfg.batch_goals, self.generator), {}
            start = torch.as_tensor(self._start_states(goals_np, reset_seed + outer), dtype=torch.float32)
            phi = {k: v.detach() for k, v in self.meta_loss.named_parameters()}
            grads, (value, (theta, alphas, rule_state)) = objective(phi, theta, start, goals, rule_state)
            result = apply_meta_gradient(optimizer, self.meta_loss, grads, value, cfg.meta_max_grad_norm)
            skipped += not result.applied
            history.append(result.task_loss)
            alpha_trace.append(float(alphas.mean()))
            if outer % cfg.model_every == 0 and outer < cfg.n_outer:
                if not all(bool(v.isfinite().all()) for v in theta.values()):  # diverged: NaN states would poison P
                    theta, rule_state = self.initial_policies(cfg.batch_goals, self.generator), {}
                real_distance = self.collect_policy(theta, goals_np, reset_seed + outer)
                for p in self.model.parameters():
                    p.requires_grad_(True)
                fit_loss = self.model.fit(self.buffer, max(1, cfg.model_epochs // 3), generator=self.generator)
                for p in self.model.parameters():
                    p.requires_grad_(False)
                model_log.append({"outer": outer, "transitions": len(self.buffer), "fit_loss": fit_loss,
                                  "one_step_rmse": self.model.one_step_error(self.buffer),
                                  "real_final_distance_of_latest_policies": real_distance,
                                  "model_final_distance_of_latest_policies": float(value)})
            keeper(outer)
            if progress is not None:
                progress(outer, result.task_loss)
        return {"task_loss": history, "alpha": alpha_trace, "skipped_meta_steps": skipped, "model": model_log,
                "meta_train_real_transitions": len(self.buffer), "validation": keeper.finish(),
                "wall_s": time.time() - start_time}

    def _start_states(self, goals: np.ndarray, seed: int) -> np.ndarray:
        """Start states drawn as the env's reset draws them (PointmassGoal at rest near 0; the reacher's noise)."""
        if not hasattr(self, "_start_env"):
            self._start_env = RealEnvs(self.env.env_id, goals[:1])
        env = self._start_env.envs[0]
        return np.stack([env.reset(seed=seed * 1000 + i)[0][self._start_env.state_slice] for i in range(len(goals))])

    # ------------------------------------------------------------------ Algorithm 5 and the baselines
    def real_updates(self, envs: RealEnvs, theta: Params, updates: int,
                     update: Callable[[Params, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Params]
                     ) -> tuple[list[list[float]], Any]:
        """Roll the policies out on the real env, then ``theta = update(theta, states, features, context, actions)``
        on that rollout (states ``(B, H, S)`` before each action), repeated: the real final distances
        ``(updates + 1, goals)`` and the last rollout. The loop of Algorithm 5, for any update rule."""
        goals = torch.as_tensor(envs.goals, dtype=torch.float32)
        curve = []
        for j in range(updates + 1):
            roll = envs.rollout(self.actor(theta), self.horizon, self.config.eval_seed)
            curve.append(roll.final_distance.tolist())
            if j == updates:
                break
            states = torch.as_tensor(roll.states, dtype=torch.float32)
            features, context = self.contexts(states[:, :-1], goals, states[:, -1])
            states = states[:, :-1]
            theta = update(theta, states, features, context, torch.as_tensor(roll.actions, dtype=torch.float32))
        return curve, roll

    def meta_test_ml3(self, envs: RealEnvs, theta: Params, updates: int) -> dict[str, Any]:
        """Algorithm 5: real rollout, step on M_phi (no model), repeated; the real final distance after each update."""
        phi = {k: v.detach() for k, v in self.meta_loss.named_parameters()}
        alphas, rule_state = [], None

        def step(params: Params, _states: torch.Tensor, features: torch.Tensor, context: torch.Tensor,
                 recorded: torch.Tensor) -> Params:
            nonlocal rule_state
            params, alpha, rule_state = self.inner(params, phi, features, recorded, rule_state, context)
            alphas.append(alpha.detach().tolist())
            rule_state = state_from_tensors(state_as_tensors(rule_state))  # detached
            return {k: v.detach() for k, v in params.items()}

        curve, roll = self.real_updates(envs, theta, updates, step)
        return {"final_distance": curve, "alpha": alphas, "states": roll.states.tolist()}

    def meta_test_goals(self, split: str) -> np.ndarray:
        """The seed's ``n_test_goals`` meta-test goals of ``split`` ("test": held out, "train")."""
        return sample_tasks(self.env.env_id, self.config.n_test_goals, split, seed=self.seed * 100_003 + 3)

    def meta_test_policies(self, n: int) -> Params:
        """The policies every method starts from at meta-test (ML3 and, in their own class, the baselines)."""
        return self.initial_policies(n, torch.Generator().manual_seed(self.seed * 1000 + 9))

    def run(self, progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
        """Meta-train, then meta-test on held-out (and train) goals beside the baselines; a JSON-ready row."""
        return self.meta_test(self.meta_train(progress))

    def meta_test(self, train_log: dict[str, Any]) -> dict[str, Any]:
        """Meta-test the (meta-trained) loss on held-out and train goals beside the tuned baselines (Alg. 5)."""
        cfg = self.config
        t0 = time.time()
        model_step, tuned_model, scores_model, model_choice = tune_model_baseline(self)
        real = tune_model_baseline(self, real_states=True) if cfg.real_state_baseline else None
        exact_step = self.env.exact_step_fn()
        tuned_exact, scores_exact = tune_task_loss(self, exact_step, cfg.test_updates)
        row: dict[str, Any] = {"seed": self.seed, "meta_train": train_log, "task_tuned_model": list(tuned_model),
                               "task_tuned_exact": list(tuned_exact), "task_tuning_scores_model": scores_model,
                               "task_tuning_scores_exact": scores_exact, **model_choice}
        if real is not None:
            row.update({"task_tuned_model_real": list(real[1]), "task_tuning_scores_model_real": real[2],
                        **{f"{k}_real": v for k, v in real[3].items()}})
        for split in ("test", "train"):
            goals = self.meta_test_goals(split)
            envs = RealEnvs(self.env.env_id, goals)
            theta = self.meta_test_policies(len(goals))
            try:
                result = {"goals": goals.tolist(), "ml3": self.meta_test_ml3(envs, theta, cfg.test_updates)}
                if split == "test" and self.meta_loss.has_minimiser:
                    # a diagnostic, not a method: M_phi's minimiser t(c) itself as the controller (where it leads)
                    roll = envs.rollout(self.minimiser_actor(), self.horizon, cfg.eval_seed)
                    result["minimiser_final_distance"] = roll.final_distance.tolist()
                if split == "test":
                    runs = [("task_model", tuned_model, model_step, False),
                            ("task_exact", tuned_exact, exact_step, False)]
                    if real is not None:
                        runs.append(("task_model_real", real[1], real[0], True))
                    for key, (features, optimizer, lr), step, on_real in runs:
                        start = starting_policies(self, features, len(goals), self.seed * 1000 + 9)  # ML3's theta
                        result[key] = optimise_task_loss(self, envs, start, cfg.test_updates, optimizer, lr, step,
                                                         features, on_real)
            finally:
                envs.close()
            row[split] = result
        row["meta_test_wall_s"] = time.time() - t0
        return row


__all__ = ["MBRLConfig", "MBRLExperiment", "unroll", "final_distance", "make_learned_loss", "config_dict"]
