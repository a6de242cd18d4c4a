"""The task-loss baselines of model-based ML3 (``ml3 mbrl``): gradient descent on the final distance through P or the
exact dynamics, tuned on train goals.

Each baseline starts from fresh policies and minimises the task loss (the final distance, summed over the goals so
that each policy gets its own gradient) through a differentiable step: the learned model P, or the env's exact
dynamics (the upper reference). Its optimizer and step size come from ``MBRLConfig.task_grid``; with
``MBRLConfig.task_policy_features`` it also chooses what its policies read (the env's features or the arm's frame),
all on **train** goals, so that the baseline runs in the class its own users would pick, not only in ML3's.
Every policy is scored by its real rollout.

With ``real_states`` (``ml3 mbrl --real-state-baseline``) the task loss through P is taken along the **real** rollout
of each update instead of P's own unroll: the states keep the real values and P supplies only the derivatives,
s_t+1 = real_t+1 + P(s_t, a_t) - stop_gradient(P(s_t, a_t)) (stochastic value gradients' way of using a model, Heess et
al. 2015). Its loss is the real final distance, so it gets the same real feedback as a meta-loss that reads the
rollout's outcome (``--loss-outcome``), and model error only bends its gradient, not its target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sb3_ml3.functional import Params
from sb3_ml3.model_based.dynamics import RealEnvs
from sb3_ml3.model_based.mbrl_envs import MBRLEnv, with_features
from sb3_ml3.model_based.mbrl_nets import PolicyBatch

if TYPE_CHECKING:  # the experiment calls into this module
    from sb3_ml3.model_based.mbrl import MBRLExperiment

#: one differentiable transition ``(s, a) -> s'``: the learned model P or the exact dynamics
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def policy_class(exp: "MBRLExperiment", features: str | None = None) -> tuple[PolicyBatch, MBRLEnv]:
    """(policies, the env description whose ``features`` they read) for ``features``: ML3's own class for ``None`` or
    ``config.policy_features``, else the same widths reading the env's features ("state") or a ``LOSS_FEATURES`` entry."""
    if features is None or features == exp.config.policy_features:
        return exp.policy, exp.env
    env = with_features(exp.base_env, features)
    return PolicyBatch(env.feature_dim, env.action_dim, exp.config.policy_hidden), env


def starting_policies(exp: "MBRLExperiment", features: str | None, n: int, seed: int) -> Params:
    """``n`` policies of the class: ML3's draw (the same initial policies as ML3's) or a seeded fresh one."""
    generator = torch.Generator().manual_seed(seed)
    if features is None or features == exp.config.policy_features:
        return exp.initial_policies(n, generator)
    return policy_class(exp, features)[0].init(n, generator)


def optimise_task_loss(exp: "MBRLExperiment", envs: RealEnvs, theta: Params, updates: int, optimizer: str, lr: float,
                       step: StepFn, features: str | None = None, real_states: bool = False) -> dict[str, Any]:
    """The task loss (final distance) minimised through ``step`` (P or exact) from the real start states.

    ``optimizer``: "adam" (``torch.optim.Adam``, as users run it) or "sgd"; Adam's per-parameter statistics are per
    policy (the parameters are disjoint slices). ``features``: the policy class (:func:`policy_class`).
    ``real_states``: along each update's real rollout, ``step`` giving only the derivatives (``unroll``'s ``anchor``).
    """
    from sb3_ml3.model_based.mbrl import final_distance, unroll

    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"the task-loss baseline's optimizer is 'adam' or 'sgd', got {optimizer!r}.")
    policy, env = policy_class(exp, features)
    goals = torch.as_tensor(envs.goals, dtype=torch.float32)
    start = torch.as_tensor(envs.start_states(exp.config.eval_seed), dtype=torch.float32)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(list(leaves.values()), lr=lr)
    curve = []
    for j in range(updates + 1):
        roll = envs.rollout(exp.actor(leaves, (policy, env)), exp.horizon, exp.config.eval_seed)
        curve.append(roll.final_distance.tolist())
        if j == updates:
            break
        real = torch.as_tensor(roll.states, dtype=torch.float32) if real_states else None
        states, _ = unroll(step, policy, leaves, env, start if real is None else real[:, 0], goals, exp.horizon, real)
        loss = final_distance(env, states, goals).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"final_distance": curve, "optimizer": optimizer, "lr": lr,
            "policy_features": features or exp.config.policy_features, "states": roll.states.tolist()}


def tune_task_loss(exp: "MBRLExperiment", step: StepFn, updates: int, real_states: bool = False
                   ) -> tuple[tuple[str, str, float], dict[str, float]]:
    """The (policy features, optimizer, step size) of the task-loss baseline with the lowest final distance after
    ``updates`` on **train** goals (never the held-out ones): ``config.task_grid`` times the policy classes of
    ``config.task_policy_features`` (ML3's own class when that is empty). Scores are keyed "features optimizer lr"."""
    cfg = exp.config
    classes = tuple(cfg.task_policy_features) or (cfg.policy_features,)
    goals = exp.train_goals(cfg.n_test_goals, 2)
    envs = RealEnvs(exp.env.env_id, goals)
    scores: dict[str, float] = {}
    try:
        for features in classes:
            theta = starting_policies(exp, features, len(goals), exp.seed + 77)
            for optimizer, lr in cfg.task_grid:
                curve = optimise_task_loss(exp, envs, theta, updates, optimizer, lr, step, features,
                                           real_states)["final_distance"]
                final = float(np.mean(curve[-1]))
                scores[f"{features} {optimizer} {lr:g}"] = final if math.isfinite(final) else float("inf")
    finally:
        envs.close()
    best = min(scores, key=scores.get)
    features, name, lr_text = best.split()
    return (features, name, float(lr_text)), scores


def tune_model_baseline(exp: "MBRLExperiment", real_states: bool = False
                        ) -> tuple[StepFn, tuple[str, str, float], dict[str, float], dict[str, Any]]:
    """The learned model, (class, optimizer, step) and scores of the task loss through the model (``real_states``:
    along the real rollouts), tuned on train goals. With ``task_model_from="restarts"`` every
    restart's P is a candidate too (the lowest train-goal score wins), so the baseline does not hang on the restart
    ML3's validation kept; the choice is logged."""
    cfg = exp.config
    candidates = (exp.restart_models if cfg.task_model_from == "restarts" and exp.restart_models
                  else [(exp.restart, exp.model)])
    best, by_restart = None, {}
    for restart, model in candidates:
        tuned, scores = tune_task_loss(exp, model, cfg.test_updates, real_states)
        score = min(scores.values())  # the tuned setting's score: tune_task_loss keeps the lowest
        by_restart[str(restart)] = scores
        if best is None or score < best[0]:
            best = (score, restart, model, tuned, scores)
    assert best is not None
    choice = ({"task_model_restart": best[1], "task_tuning_scores_model_by_restart": by_restart}
              if len(candidates) > 1 else {})
    return best[2], best[3], best[4], choice


__all__ = ["StepFn", "policy_class", "starting_policies", "optimise_task_loss", "tune_model_baseline", "tune_task_loss"]
