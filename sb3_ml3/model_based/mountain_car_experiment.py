"""Meta-training, meta-testing and the baselines of ``ml3 mountain-car`` (paper Sec. IV.B.3, Fig. 6a-b).

Per seed: meta-train the shaped and the unshaped learned loss (Alg. 3 with the exact dynamics), then from
the same fresh policies (one per start state, drawn once per seed) record the distance to the goal at
the last step after every policy update of

* ML3 shaped / ML3 unshaped: ``test_updates`` inner steps on the frozen M_phi (Alg. 5);
* GD on the unshaped task loss: the same clipped SGD step on the task loss itself, for
  ``baseline_updates`` steps, its step size picked from ``gd_lrs`` on the train starts only;
* iLQR: box-constrained iLQR (:mod:`sb3_ml3.model_based.ilqr`) on the same dynamics and the unshaped
  cost sum_t (x_t - g)^2 + r u_t^2 from zero actions; one iteration is one update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import grad

from sb3_ml3.envs.mountain_car import MAX_FORCE, torch_step
from sb3_ml3.functional import apply_meta_gradient, make_meta_optimizer
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.model_based.ilqr import ilqr
from sb3_ml3.model_based.mountain_car import (
    TASK_LOSSES,
    MountainCarConfig,
    MountainCarML3,
    at_rest,
    clip_scales,
    init_policy,
    initial_policies,
    make_meta_loss,
    unroll,
)

METHODS = ("ml3_shaped", "ml3_unshaped", "gd_unshaped", "ilqr")


def meta_train(config: MountainCarConfig, variant: str, generator: torch.Generator,
               progress: Callable[[], None] | None = None, fixed: dict | None = None) -> tuple[MetaLoss, list[float]]:
    """Alg. 3 with the exact model: fresh policies (or copies of ``fixed``, the authors' protocol) and train starts
    every outer step; returns the loss and the task loss per step."""
    meta_loss = make_meta_loss(config, variant, generator)
    model = MountainCarML3(config, meta_loss)
    optimizer = make_meta_optimizer(meta_loss.parameters(), config.meta_lr)
    lo, hi = config.train_start_range
    curve, skipped = [], 0
    for _ in range(config.n_outer):
        params = initial_policies(config, config.batch_tasks, generator, fixed)
        starts = torch.rand(config.batch_tasks, generator=generator) * (hi - lo) + lo
        batch = (at_rest(starts), torch.full((config.batch_tasks, 1), float(config.goal)))
        phi = {k: v.detach() for k, v in meta_loss.named_parameters()}
        grads, value = model.meta_gradient(variant, phi, params, batch)
        step = apply_meta_gradient(optimizer, meta_loss, grads, value, max_grad_norm=1.0)
        skipped += not step.applied
        curve.append(step.task_loss / config.inner_steps)
        if progress is not None:
            progress()
    if skipped:
        print(f"mountain-car {variant}: {skipped} of {config.n_outer} meta-steps skipped (non-finite values)")
    return meta_loss, curve


def clipped_sgd(config: MountainCarConfig, loss: Callable, lr: float) -> Callable:
    """The inner step's rule (per-policy gradient clip, then SGD) applied to any loss of (params, batch)."""
    step = grad(loss)

    def update(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        grads = step(params, batch)
        scales = clip_scales(grads, config.inner_max_grad_norm)
        if scales is None:
            return {k: params[k] - lr * torch.nan_to_num(g) for k, g in grads.items()}
        return {k: params[k] - lr * torch.nan_to_num(g) * scales[k] for k, g in grads.items()}

    return update


def ilqr_curve(config: MountainCarConfig, start: float) -> tuple[list[float], torch.Tensor]:
    """Final distance after each iLQR iteration (padded after convergence) and the last trajectory's x."""
    goal, r = float(config.goal), config.ilqr_action_cost
    result = ilqr(lambda x, u: torch_step(x, u), lambda x, u, t: (x[0] - goal) ** 2 + r * (u @ u),
                  torch.tensor([start, 0.0]), torch.zeros(config.horizon, 1),
                  final_cost=lambda x: (x[0] - goal) ** 2, action_low=-MAX_FORCE, action_high=MAX_FORCE,
                  max_iterations=config.baseline_updates)
    curve = [abs(float(states[-1, 0]) - goal) for states, _ in result.history]
    curve += [curve[-1]] * (config.baseline_updates + 1 - len(curve))
    return curve, result.states[:, 0].float()


def evaluate(config: MountainCarConfig, meta_losses: dict[str, MetaLoss], starts: Sequence[float],
             generator: torch.Generator, gd_lr: float, fixed: dict | None = None) -> dict[str, Any]:
    """Final-distance curves ``(updates + 1, n_starts)`` per method from one shared draw of fresh policies (or
    copies of the meta-training's ``fixed`` policy)."""
    n = len(starts)
    params = initial_policies(config, n, generator, fixed)
    batch = (at_rest(starts), torch.full((n, 1), float(config.goal)))
    out: dict[str, Any] = {}
    for variant in TASK_LOSSES:
        model = MountainCarML3(config, meta_losses[variant])
        phi = {k: v.detach() for k, v in meta_losses[variant].named_parameters()}
        update = _stateful_update(model, phi)
        out[f"ml3_{variant}"], trained, paths = _optimise_and_keep(model, params, batch, config.test_updates, update,
                                                                  keep_paths=True)
        out[f"trajectory_ml3_{variant}"] = paths[-1]  # the last update's policy
        best = out[f"ml3_{variant}"][1:].argmin(0) + 1  # per start: the update (1..test_updates) closest to the goal
        out[f"trajectory_best_ml3_{variant}"] = paths[best, torch.arange(n)]
        out[f"best_update_ml3_{variant}"] = best
    model = MountainCarML3(config, meta_losses["unshaped"])
    update = clipped_sgd(config, lambda q, b: model.task_loss("unshaped", q, b) * n, gd_lr)
    out["gd_unshaped"], trained, _ = _optimise_and_keep(model, params, batch, config.baseline_updates, update)
    out["trajectory_gd_unshaped"] = unroll(trained, *batch, config.horizon)[0][:, :, 0]
    curves, paths = zip(*(ilqr_curve(config, s) for s in starts))
    out["ilqr"] = torch.tensor(curves).T
    out["trajectory_ilqr"] = torch.stack(paths)
    return out


def _stateful_update(model: MountainCarML3, phi: dict) -> Callable:
    """``update(params, batch) -> params'``: the inner step on the frozen M_phi, its rule's state (Adam's
    statistics) carried from one update to the next of the same policies."""
    state: list[Any] = [None]

    def update(params: dict, batch: tuple) -> dict:
        params, state[0] = model.inner_step(params, phi, batch, state[0])
        return params

    return update


def _optimise_and_keep(model: MountainCarML3, params: dict, batch: tuple, updates: int, update: Callable,
                       keep_paths: bool = False):
    """The final-distance curve ``(updates + 1, n)``, the last parameters and, with ``keep_paths``, x_t of every
    update's policy ``(updates + 1, n, T + 1)`` (else None)."""
    paths: list[torch.Tensor] = []

    def score(policy: dict) -> torch.Tensor:  # |x_T - g| per start, from the kept trajectory when there is one
        if not keep_paths:
            return model.final_distances(policy, batch)
        with torch.no_grad():
            paths.append(unroll(policy, batch[0], batch[1], model.config.horizon)[0][:, :, 0])
        return (paths[-1][:, -1] - model.config.goal).abs()

    curve = [score(params)]
    for _ in range(updates):
        params = {k: v.detach() for k, v in update(params, batch).items()}
        curve.append(score(params))
    return torch.stack(curve), params, (torch.stack(paths) if keep_paths else None)


def pick_gd_lr(config: MountainCarConfig, generator: torch.Generator,
               fixed: dict | None = None) -> tuple[float, dict[str, float]]:
    """GD's step size on the unshaped loss: the lowest mean final distance after ``baseline_updates`` on train starts."""
    starts = list(config.train_eval_starts)
    n = len(starts)
    params = initial_policies(config, n, generator, fixed)
    batch = (at_rest(starts), torch.full((n, 1), float(config.goal)))
    model = MountainCarML3(config, make_meta_loss(config, "unshaped", torch.Generator().manual_seed(0)))
    scores = {}
    for lr in config.gd_lrs:
        update = clipped_sgd(config, lambda q, b: model.task_loss("unshaped", q, b) * n, lr)
        scores[str(lr)] = float(_optimise_and_keep(model, params, batch, config.baseline_updates, update)[0][-1].mean())
    best = min(config.gd_lrs, key=lambda lr: scores[str(lr)])
    return best, scores


def run_seed(config: MountainCarConfig, seed: int, progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Meta-train both losses and meta-test every method from train and unseen starts, for one seed."""
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    meta_losses, out = {}, {"seed": seed}
    fixed = None
    if config.policy_init == "fixed":  # one draw per seed: both losses meta-train from it and every method starts at it
        fixed = init_policy(1, config.policy_hidden, generator, kind=config.policy)
    for variant in TASK_LOSSES:
        # meta_restarts > 1: independent meta-trainings, the one with the lowest meta-train task loss (mean of its
        # last 50 outer steps, a training-only number) kept
        runs = [meta_train(config, variant, generator, progress, fixed) for _ in range(config.meta_restarts)]
        scores = [float(torch.tensor(curve[-50:]).mean()) for _, curve in runs]
        kept = min(range(len(runs)), key=scores.__getitem__)
        meta_losses[variant], out[f"meta_train_task_loss_{variant}"] = runs[kept]
        if config.meta_restarts > 1:
            out[f"meta_restart_scores_{variant}"], out[f"meta_restart_kept_{variant}"] = scores, kept
    out["meta_train_seconds"] = time.perf_counter() - t0
    eval_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    gd_lr, out["gd_lr_scores"] = pick_gd_lr(config, torch.Generator().manual_seed(eval_seed + 1), fixed)
    out["gd_lr"] = gd_lr
    t1 = time.perf_counter()
    for split, starts in (("train", config.train_eval_starts), ("test", config.test_starts)):
        result = evaluate(config, meta_losses, starts, torch.Generator().manual_seed(eval_seed), gd_lr, fixed)
        for method in METHODS:
            curve = result[method]
            out[f"curve_{split}_{method}"] = curve.mean(1).tolist()  # mean final distance over starts, per update
            out[f"final_{split}_{method}"] = curve[min(config.test_updates, len(curve) - 1)].tolist()  # per start
            out[f"within_{split}_{method}"] = curve[1: config.test_updates + 1].min(0).values.tolist()  # best update
            out[f"last_{split}_{method}"] = curve[-1].tolist()  # after all of its updates
            out[f"trajectory_{split}_{method}"] = result[f"trajectory_{method}"].tolist()
            if f"trajectory_best_{method}" in result:  # ML3: the policy at its best update within test_updates
                out[f"trajectory_best_{split}_{method}"] = result[f"trajectory_best_{method}"].tolist()
                out[f"best_update_{split}_{method}"] = result[f"best_update_{method}"].tolist()
    out["meta_test_seconds"] = time.perf_counter() - t1
    out["meta_losses"] = meta_losses
    return out


def summarise(config: MountainCarConfig, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds and starts, success rates at ``test_updates`` updates, and the paper's claim."""
    threshold, summary = config.success_threshold, {"seeds": [r["seed"] for r in per_seed]}
    for split in ("train", "test"):
        for method in METHODS:
            finals = torch.tensor([r[f"final_{split}_{method}"] for r in per_seed])
            lasts = torch.tensor([r[f"last_{split}_{method}"] for r in per_seed])
            summary[f"mean_final_distance_{split}_{method}"] = float(finals.mean())
            summary[f"success_{split}_{method}"] = float((finals < threshold).float().mean())
            summary[f"mean_last_distance_{split}_{method}"] = float(lasts.mean())
            summary[f"success_last_{split}_{method}"] = float((lasts < threshold).float().mean())
            within = torch.tensor([r[f"within_{split}_{method}"] for r in per_seed])
            summary[f"success_within_{split}_{method}"] = float((within < threshold).float().mean())
    shaped_all = all(summary[f"success_{s}_ml3_shaped"] == 1.0 for s in ("train", "test"))
    others_fail = all(summary[f"success_{s}_{m}"] < 1.0 for s in ("train", "test") for m in METHODS[1:])
    summary["goal_met"] = bool(shaped_all and others_fail)
    summary["shaped_reaches_goal_everywhere"] = bool(shaped_all)
    # the claim read as "under the threshold after some update 1..test_updates" (a policy may pass the goal later)
    within_all = all(summary[f"success_within_{s}_ml3_shaped"] == 1.0 for s in ("train", "test"))
    others_within = all(summary[f"success_within_{s}_{m}"] < 1.0 for s in ("train", "test") for m in METHODS[1:])
    summary["goal_met_within"] = bool(within_all and others_within)
    return summary


__all__ = ["METHODS", "meta_train", "evaluate", "ilqr_curve", "pick_gd_lr", "run_seed", "summarise", "clipped_sgd"]
