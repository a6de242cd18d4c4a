"""ML3 shaped by expert demonstrations on ReacherGoal-v0 (paper Sec. IV.B.4): meta-train, meta-test, BC.

* **Inner step** (the paper's, Eq. 2): roll out pi_theta on a target in MuJoCo (no gradient through
  the env) and take theta' = theta - alpha grad_theta mean_t M_phi(s_t, pi_theta(s_t)) over the
  episode's states; the goal g is part of s (obs[4:6]), as in the paper.
* **Outer step** (Eq. 5-6): the behavioural-cloning task loss
  L_T(theta') = mean_t ||pi_theta'(s_t) - pi_expert(s_t)||^2 on the expert's demonstration states of
  the four training targets, differentiated through the inner step (:func:`sb3_ml3.functional.meta_gradient`).
  One policy per training target, all four updated side by side (``vmap``); a policy keeps
  training on M_phi for ``reset_every`` inner steps (rolled out again after each) before it is
  drawn afresh, so the loss learns to guide a whole optimisation, not only its first step.
* **Meta-test** (Alg. 5): fresh policies on new targets, updated by M_phi alone from their own
  rollouts; no demonstrations, no expert, no reward.
* **Behavioural cloning** (the baseline): one goal-conditioned policy fitted with Adam to the same
  demonstrations, tested on the new targets.

Policies and the meta-loss read the observation scaled by :data:`OBS_SCALE` (each feature about
unit spread), recorded in the meta-loss file's metadata; or, with ``features="arm-frame"``, the
observation in the upper arm's frame (:func:`arm_frame`), which drops the shoulder angle and the
goal's bearing: the planar arm's dynamics and the expert do not depend on them, so four targets
teach what forty would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from sb3_ml3.envs.reacher import arm_frame_features
from sb3_ml3.functional import (
    Params,
    apply_meta_gradient,
    inner_update,
    make_meta_optimizer,
    meta_gradient,
)
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.model_based.experts import Demonstrations, ReacherIKPDExpert
from sb3_ml3.model_based.reacher_experts_env import GoalRollouts, Trajectories

#: observation scale: cos/sin x1, goal x5, joint velocities x0.2, fingertip - goal x10 (unit spread each)
OBS_SCALE = (1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 0.2, 0.2, 10.0, 10.0)
META_FORMS = ("quadratic", "mlp")
#: what policies and the meta-loss read, and its width
FEATURES = {"obs": len(OBS_SCALE), "arm-frame": 7}
#: where the task loss reads the expert: its demonstrations (the paper's) or the policy's own rollout states
TASK_STATES = ("demos", "rollouts")
DEMO_STARTS = ("env", "random")


@dataclass
class ReacherExpertsConfig:
    """Settings of ``ml3 reacher-experts`` (the paper gives four training targets; the rest is ours)."""

    n_outer: int = 1500  # outer steps per meta-loss
    inner_lr: float = 0.3  # alpha, also the meta-test step
    inner_max_grad_norm: float = 1.0  # each inner gradient clipped to this global norm (bounds any step phi asks)
    meta_lr: float = 3e-3  # eta (Adam)
    meta_max_grad_norm: float = 10.0
    reset_every: int = 25  # inner steps before the four policies are drawn afresh
    n_demos: int = 4  # expert episodes per training target (different initial arms)
    n_train_goals: int = 4  # the paper's four training targets, one per training sector
    n_test_goals: int = 10
    test_updates: int = 100  # meta-test updates (one rollout each)
    bc_steps: int = 3000  # Adam steps of the BC baseline (it fits its own targets to ~0.003 by ~4k)
    bc_lr: float = 1e-3
    bc_eval_every: int = 50
    policy_hidden: tuple[int, ...] = (64, 64)
    meta_hidden: tuple[int, ...] = (40, 40)
    meta_form: str = "quadratic"  # M = w_phi(s) ||a - t_phi(s)||^2, or an MLP of (s, a) with softplus output
    success_threshold: float = 0.02  # ReacherGoal's: final fingertip-goal distance
    features: str = "obs"  # what policies and M_phi read: the scaled observation, or the arm-frame features
    demo_starts: str = "env"  # demonstrations from ReacherGoal's reset, or from random arms (whole joint space)
    task_states: str = "demos"  # BC task loss on the demonstrations, or the expert queried on the rollout states
    rollout_starts: str = "env"  # meta-training rollouts from ReacherGoal's reset, or from random arms
    val_every: int = 0  # keep-best: every this many outer steps, meta-test on the training targets (0: off)
    val_updates: int = 60  # updates of those validation meta-tests

    def __post_init__(self) -> None:
        if self.val_every < 0:
            raise ValueError(f"val_every must be 0 (off) or a positive number of outer steps, got {self.val_every}.")
        sizes = ("val_updates", "n_outer", "reset_every", "n_demos", "n_train_goals", "n_test_goals", "test_updates",
                 "bc_steps", "bc_eval_every")
        bad = [f"{k}={getattr(self, k)}" for k in sizes if int(getattr(self, k)) < 1]
        if bad:
            raise ValueError(f"sizes must be positive integers; fix {bad}.")
        for name in ("inner_lr", "inner_max_grad_norm", "meta_lr", "meta_max_grad_norm", "bc_lr", "success_threshold"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive, finite number, got {value}.")
        if self.meta_form not in META_FORMS:
            raise ValueError(f"meta_form must be one of {META_FORMS}, got {self.meta_form!r}.")
        for name, allowed in (("features", tuple(FEATURES)), ("demo_starts", DEMO_STARTS),
                              ("task_states", TASK_STATES), ("rollout_starts", DEMO_STARTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.n_train_goals != 4:
            raise ValueError("the training targets are one per training sector: n_train_goals must be 4.")


class ReacherPolicy(nn.Module):
    """pi_theta(s): an MLP (tanh) from the features (``in_features`` wide) to the two torques (the env clips)."""

    def __init__(self, hidden: Sequence[int] = (64, 64), in_features: int = len(OBS_SCALE)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = int(in_features)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.Tanh()]
            width = int(h)
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def _obs_tensor(obs: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(obs, dtype=np.float32) if isinstance(obs, np.ndarray) else obs, dtype=torch.float32)
    if x.shape[-1] != len(OBS_SCALE):
        raise ValueError(f"expected ReacherGoal-v0 observations of width {len(OBS_SCALE)}, got {tuple(x.shape)}.")
    return x


def scale_obs(obs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The observation as the policy and the meta-loss read it (float32 tensor, :data:`OBS_SCALE` applied)."""
    return _obs_tensor(obs) * torch.tensor(OBS_SCALE)


def arm_frame(obs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """ReacherGoal-v0's observation in the upper arm's frame, ``(..., 7)`` (:func:`sb3_ml3.envs.reacher.arm_frame_features`):
    a function of these features is the same on every target of a given radius."""
    return arm_frame_features(_obs_tensor(obs))


def observation_features(obs: np.ndarray | torch.Tensor, kind: str = "obs") -> torch.Tensor:
    """What policies and the meta-loss read: :func:`scale_obs` (``"obs"``) or :func:`arm_frame`."""
    if kind == "obs":
        return scale_obs(obs)
    if kind == "arm-frame":
        return arm_frame(obs)
    raise ValueError(f"features must be one of {tuple(FEATURES)}, got {kind!r}.")


def init_policies(policy: nn.Module, n: int, generator: torch.Generator) -> Params:
    """``n`` fresh parameter sets stacked on dim 0: PyTorch's Linear initialisation U(+-1/sqrt(fan_in)), seeded."""
    params = {}
    for name, p in policy.named_parameters():
        module = policy.get_submodule(name.rpartition(".")[0])
        bound = 1.0 / math.sqrt(module.in_features)
        params[name] = (torch.rand((n, *p.shape), generator=generator) * 2 - 1) * bound
    return params


def make_meta_loss(config: ReacherExpertsConfig, generator: torch.Generator, metadata: dict | None = None) -> MetaLoss:
    """M_phi(s, a): the quadratic form w_phi(s) ||a - t_phi(s)||^2 (bounded below, a learned target) or an MLP."""
    meta = {"experiment": "reacher-experts", "env_id": "ReacherGoal-v0", "obs_scale": list(OBS_SCALE),
            "features": config.features, "policy_hidden": list(config.policy_hidden), **(metadata or {})}
    spec = f"obs:{FEATURES[config.features]}, action:2"
    if config.meta_form == "quadratic":
        loss = MetaLoss(spec, hidden_sizes=config.meta_hidden, activation="tanh", quadratic=("action",),
                        metadata=meta)
    else:
        loss = MetaLoss(spec, hidden_sizes=config.meta_hidden, activation="tanh", output="softplus",
                        metadata=meta)
    loss.reset_parameters(generator)
    return loss


class ReacherExpertsLearner:
    """The pure functions of one setting (policy architecture, meta-loss) and the three procedures on them."""

    def __init__(self, config: ReacherExpertsConfig, expert: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.config = config
        self.policy = ReacherPolicy(config.policy_hidden, FEATURES[config.features])
        #: queried at the rollout states when ``task_states="rollouts"`` (default: the IK + PD expert)
        self.expert = expert if expert is not None else ReacherIKPDExpert()
        self.template = make_meta_loss(config, torch.Generator().manual_seed(0))

        def act(params: Params, obs: torch.Tensor) -> torch.Tensor:
            return functional_call(self.policy, params, (obs,))

        def learned_loss(params: Params, phi: Params, states: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, phi, (states, act(params, states))).mean()  # Eq. 3

        def bc_loss(params: Params, demo: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return ((act(params, demo[0]) - demo[1]) ** 2).sum(-1).mean()  # the BC task loss

        self.act, self.learned_loss, self.bc_loss = act, learned_loss, bc_loss
        self.batched_act = vmap(act)

    def features(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The observation as this setting's policies and meta-loss read it."""
        return observation_features(obs, self.config.features)

    # ------------------------------------------------------------------ rollouts
    def policy_fn(self, params: Params) -> Callable[[np.ndarray], np.ndarray]:
        """The numpy policy of G stacked parameter sets, one per env of a :class:`GoalRollouts`."""

        def fn(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return self.batched_act(params, self.features(obs)[:, None, :])[:, 0].numpy()

        return fn

    # ------------------------------------------------------------------ meta-train
    def meta_train(self, demos: Demonstrations, generator: torch.Generator, seed: int,
                   progress: Callable[[int], None] | None = None) -> tuple[MetaLoss, dict[str, list[float]]]:
        """Outer steps on the four training targets; returns M_phi and the per-step task loss (before/after)."""
        cfg = self.config
        meta_loss = make_meta_loss(cfg, generator, {"seed": seed})
        optimizer = make_meta_optimizer(meta_loss.parameters(), cfg.meta_lr)
        states, actions = demos.per_goal()
        query = (self.features(states), torch.as_tensor(actions))
        rollouts = GoalRollouts(demos.goals)
        n = len(rollouts)

        def one_task(theta: Params, phi: Params, batch: torch.Tensor, demo: tuple[torch.Tensor, torch.Tensor]):
            return meta_gradient(self.learned_loss, self.bc_loss, theta, phi, batch, demo, cfg.inner_lr,
                                 max_grad_norm=cfg.inner_max_grad_norm, return_updated=True)

        step = vmap(one_task, in_dims=(0, None, 0, 0))
        history: dict[str, list[float]] = {"task_loss": [], "skipped": [], "validation": [], "validation_step": []}
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        theta = init_policies(self.policy, n, generator)
        reset_seed = 10_000 * (seed + 1)
        for i in range(cfg.n_outer + 1):
            if cfg.val_every and i % cfg.val_every == 0:  # keep-best on the training targets (never held-out ones)
                score = self.validate(meta_loss, demos.goals, seed)
                history["validation"].append(score)
                history["validation_step"].append(i)
                if best is None or score < best[0]:
                    best = (score, {k: v.detach().clone() for k, v in meta_loss.state_dict().items()})
            if i == cfg.n_outer:
                break
            if i > 0 and i % cfg.reset_every == 0:
                theta = init_policies(self.policy, n, generator)
            episode = rollouts.run(self.policy_fn(theta), [reset_seed + i * n + k for k in range(n)],
                                   random_arm=cfg.rollout_starts == "random")
            phi = dict(meta_loss.named_parameters())
            batch = self.features(episode.states)
            if cfg.task_states == "rollouts":  # the expert labels the states the policy visits (DAgger-style)
                labels = np.asarray(self.expert(episode.states.reshape(-1, episode.states.shape[-1])), dtype=np.float32)
                query = (batch, torch.as_tensor(labels.reshape(*episode.states.shape[:2], -1)))
            grads, values, updated = step(theta, phi, batch, query)
            result = apply_meta_gradient(optimizer, meta_loss, {k: g.mean(0) for k, g in grads.items()},
                                         values.mean(), cfg.meta_max_grad_norm)
            history["task_loss"].append(float(values.detach().mean()))
            if not result.applied:
                history["skipped"].append(i)
            theta = {k: v.detach() for k, v in updated.items()}
            if progress is not None:
                progress(i)
        rollouts.close()
        if best is not None:
            meta_loss.load_state_dict(best[1])
            history["kept_step"] = [history["validation_step"][int(np.argmin(history["validation"]))]]
        return meta_loss, history

    def validate(self, meta_loss: MetaLoss, goals: np.ndarray, seed: int) -> float:
        """Mean final distance over the last 10 of ``val_updates`` meta-test updates on ``goals`` (fixed seeds)."""
        updates = self.config.val_updates
        result = self.meta_test(meta_loss, goals, torch.Generator().manual_seed(90_000 + seed), 50_000 + seed, updates)
        return float(result["final_distance"][:, -min(10, updates + 1):].mean())

    # ------------------------------------------------------------------ meta-test
    def meta_test(self, meta_loss: MetaLoss, goals: np.ndarray, generator: torch.Generator, eval_seed: int,
                  updates: int | None = None, return_policies: bool = False) -> dict[str, Any]:
        """Fresh policies on ``goals`` updated by M_phi alone (Alg. 5).

        Returns ``"final_distance"`` and ``"metric"`` (sum over the episode of -distance, METRICS.md),
        each ``(G, updates + 1)``: column ``j`` is a deterministic evaluation episode (fixed reset seeds
        ``eval_seed + i``) after ``j`` updates; each update rolls the policy out once (a fresh initial
        arm) and takes the inner step on that episode's states. ``return_policies``: also ``"policies"``, the
        last parameters (stacked over the goals, for :meth:`policy_fn`), to look at what the loss trained.
        """
        cfg = self.config
        updates = cfg.test_updates if updates is None else updates
        rollouts = GoalRollouts(goals)
        n = len(rollouts)
        theta = init_policies(self.policy, n, generator)
        phi = {k: v.detach() for k, v in meta_loss.named_parameters()}
        step = vmap(lambda th, batch: inner_update(self.learned_loss, th, phi, batch, cfg.inner_lr,
                                                   max_grad_norm=cfg.inner_max_grad_norm))
        eval_seeds = [eval_seed + i for i in range(n)]
        final, metric = np.empty((n, updates + 1)), np.empty((n, updates + 1))
        for j in range(updates + 1):
            evaluation = rollouts.run(self.policy_fn(theta), eval_seeds)
            final[:, j], metric[:, j] = evaluation.final_distance, -evaluation.distances.sum(1)
            if j == updates:
                break
            episode = rollouts.run(self.policy_fn(theta), [eval_seed + 7_919 * (j + 1) + i for i in range(n)])
            theta = {k: v.detach() for k, v in step(theta, self.features(episode.states)).items()}
        rollouts.close()
        out: dict[str, Any] = {"final_distance": final, "metric": metric}
        if return_policies:
            out["policies"] = theta
        return out

    # ------------------------------------------------------------------ behavioural cloning
    def behavioural_cloning(self, demos: Demonstrations, eval_goals: dict[str, np.ndarray],
                            generator: torch.Generator, eval_seed: int) -> dict[str, np.ndarray]:
        """One goal-conditioned policy fitted with Adam (full batch) to the pooled demonstrations.

        Returns ``"steps"`` (the evaluation points) and, per name of ``eval_goals``, ``{"final_distance",
        "metric"}`` each ``(G, len(steps))``, of deterministic episodes on those goals (the meta-test's seeds).
        """
        cfg = self.config
        states, actions = demos.pooled()
        data = (self.features(states), torch.as_tensor(actions))
        params = {k: v[0].clone().requires_grad_(True) for k, v in init_policies(self.policy, 1, generator).items()}
        optimizer = torch.optim.Adam(params.values(), lr=cfg.bc_lr)
        rollouts = {name: GoalRollouts(g) for name, g in eval_goals.items()}
        steps = [s for s in range(cfg.bc_steps + 1) if s % cfg.bc_eval_every == 0 or s == cfg.bc_steps]
        curves: dict[str, list[Trajectories]] = {name: [] for name in eval_goals}
        gradient = grad(self.bc_loss)
        for s in range(cfg.bc_steps + 1):
            if s in steps:
                for name, r in rollouts.items():
                    stacked = {k: v.detach().expand(len(r), *v.shape) for k, v in params.items()}
                    curves[name].append(r.run(self.policy_fn(stacked), [eval_seed + i for i in range(len(r))]))
            if s == cfg.bc_steps:
                break
            grads = gradient({k: v.detach() for k, v in params.items()}, data)
            optimizer.zero_grad(set_to_none=True)
            for k, v in params.items():
                v.grad = grads[k]
            optimizer.step()
        for r in rollouts.values():
            r.close()
        return {"steps": np.asarray(steps), **{
            name: {"final_distance": np.stack([e.final_distance for e in c], axis=1),
                   "metric": np.stack([-e.distances.sum(1) for e in c], axis=1)} for name, c in curves.items()}}


__all__ = [
    "DEMO_STARTS",
    "FEATURES",
    "META_FORMS",
    "OBS_SCALE",
    "TASK_STATES",
    "ReacherExpertsConfig",
    "ReacherExpertsLearner",
    "ReacherPolicy",
    "arm_frame",
    "init_policies",
    "make_meta_loss",
    "observation_features",
    "scale_obs",
]
