"""Supervised ML3: meta-train a learned loss (Algorithm 1) and meta-test it (Algorithm 2).

The optimizee f_theta is any ``nn.Module`` used as a *template*: its architecture is called with
explicit parameter dictionaries through :func:`torch.func.functional_call`, so one template serves
every seed and task (and a ``torch.compile``-d meta-step is compiled once per process).

Meta-training (Alg. 1, Sec. III.A)::

    theta <- init                                  every ``reset_every`` outer iterations
    theta' = theta - alpha grad_theta E[M_phi(y, f_theta(x))]          (Eq. 2-3)
    phi    <- phi - eta grad_phi L_T(y_q, f_theta'(x_q))               (Eq. 5-6)
    theta  <- theta' (detached)

Meta-testing (Alg. 2): a fresh optimizee takes plain SGD steps on the frozen meta-loss, and the
same initial optimizee takes the same number of steps on the task loss, for comparison; the task
metric is recorded after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from sb3_ml3.functional import Params, apply_meta_gradient, make_meta_optimizer, meta_gradient, parameters_of
from sb3_ml3.meta_loss import MetaLoss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RegressionTask(NamedTuple):
    """One supervised task: a support set the optimizee trains on and a held-out query set."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The regression task loss L_T = mean (y - f(x))^2."""
    return ((prediction - target) ** 2).mean()


def learned_loss_fn(optimizee: nn.Module, meta_loss: MetaLoss) -> Callable[[Params, Params, Any], torch.Tensor]:
    """L_learned(theta, phi, (x, y)) = E[M_phi(f_theta(x), y)] for a meta-loss with inputs (y_pred, y_target)."""
    if len(meta_loss.spec.fields) != 2:
        raise ValueError(
            f"Supervised ML3 feeds the meta-loss (prediction, target); this one expects [{meta_loss.spec}]."
        )

    def learned_loss(params: Params, meta_params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        prediction = functional_call(optimizee, params, (x,))
        return functional_call(meta_loss, meta_params, (prediction, y)).mean()  # Eq. 3

    return learned_loss


def task_loss_fn(optimizee: nn.Module, loss: LossFn = mse) -> Callable[[Params, Any], torch.Tensor]:
    """L_T(theta, (x, y)) = loss(f_theta(x), y)."""

    def task_loss(params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return loss(functional_call(optimizee, params, (x,)), y)

    return task_loss


def init_params(optimizee: nn.Module, generator: torch.Generator) -> Params:
    """Fresh optimizee parameters with PyTorch's default Linear/Conv initialisation, drawn from ``generator``.

    Every weight and its layer's bias are U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in being the size of
    one output unit's weights; a parameter with no sibling ``weight`` gets fan_in 1.
    """
    named = dict(optimizee.named_parameters())
    params = {}
    for name, value in named.items():
        prefix, _, _ = name.rpartition(".")
        weight = named.get(f"{prefix}.weight" if prefix else "weight", value)
        fan_in = int(weight[0].numel()) if weight.dim() > 1 else 1
        bound = fan_in ** -0.5
        params[name] = (torch.rand(value.shape, generator=generator, dtype=value.dtype) * 2 - 1) * bound
    return params


@dataclass
class MetaTrainResult:
    """What :func:`meta_train` measured."""

    task_loss: list[float] = field(default_factory=list)  # L_T after each inner step (per outer iteration)
    eval_iterations: list[int] = field(default_factory=list)
    eval_metric: list[float] = field(default_factory=list)  # meta-test metric on the meta-train task
    skipped_steps: int = 0
    skipped_reasons: list[str] = field(default_factory=list)


def meta_train(
    meta_loss: MetaLoss,
    learned_loss: Callable[[Params, Params, Any], torch.Tensor],
    task_loss: Callable[[Params, Any], torch.Tensor],
    init_fn: Callable[[torch.Generator], Params],
    task_fn: Callable[[int], Any],
    n_outer: int,
    inner_lr: float,
    meta_lr: float,
    generator: torch.Generator,
    inner_steps: int = 1,
    reset_every: int = 1,
    first_order: bool = False,
    max_grad_norm: float | None = None,
    compile: bool = False,
    evaluate: Callable[[MetaLoss], float] | None = None,
    eval_every: int = 0,
    progress: Callable[[int], None] | None = None,
    meta_optimizer: torch.optim.Optimizer | None = None,
) -> MetaTrainResult:
    """Algorithm 1: learn phi so that SGD on M_phi lowers the task loss.

    :param learned_loss: ``(theta, phi, batch) -> scalar``, see :func:`learned_loss_fn`.
    :param task_loss: ``(theta, query) -> scalar``, see :func:`task_loss_fn`.
    :param init_fn: draws fresh optimizee parameters theta_0 from a generator.
    :param task_fn: ``outer_iteration -> (batch, query)``: the meta-train data of that iteration.
    :param reset_every: M, the number of inner steps after which theta is reset (Sec. III.A).
    :param compile: ``torch.compile`` the outer step (one compile per process; much faster on CPU).
    :param evaluate: called every ``eval_every`` iterations with the meta-loss (Fig. 2c).
    """
    if n_outer < 0 or reset_every < 1:
        raise ValueError(f"Need n_outer >= 0 and reset_every >= 1, got {n_outer} and {reset_every}.")
    optimizer = meta_optimizer or make_meta_optimizer(meta_loss.parameters(), meta_lr)
    step_fn = _meta_step_fn(learned_loss, task_loss, inner_lr, inner_steps, first_order, compile)
    result = MetaTrainResult()
    params: Params | None = None
    for iteration in range(n_outer):
        if evaluate is not None and eval_every and iteration % eval_every == 0:
            result.eval_iterations.append(iteration)
            result.eval_metric.append(float(evaluate(meta_loss)))
        if params is None or iteration % reset_every == 0:
            params = init_fn(generator)  # Alg. 1: theta <- randomly initialise
        batch, query = task_fn(iteration)
        phi = {name: p.detach() for name, p in meta_loss.named_parameters()}
        grads, value, updated = step_fn(params, phi, batch, query)
        outcome = apply_meta_gradient(optimizer, meta_loss, grads, value.detach(), max_grad_norm)  # outer step
        result.task_loss.append(outcome.task_loss)
        if not outcome.applied:
            result.skipped_steps += 1
            result.skipped_reasons.append(f"iteration {iteration}: {outcome.reason}")
            params = None  # restart from a fresh optimizee rather than continue from a diverged one
        else:
            params = {k: v.detach() for k, v in updated.items()}
        if progress is not None:
            progress(iteration)
    if evaluate is not None and eval_every:
        result.eval_iterations.append(n_outer)
        result.eval_metric.append(float(evaluate(meta_loss)))
    return result


def _meta_step_fn(
    learned_loss: Callable[[Params, Params, Any], torch.Tensor],
    task_loss: Callable[[Params, Any], torch.Tensor],
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    compile: bool,
) -> Callable[..., tuple[Params, torch.Tensor, Params]]:
    """The outer step's computation for one task: (meta-gradient, task loss, theta')."""

    def step(params: Params, phi: Params, batch: Any, query: Any) -> tuple[Params, torch.Tensor, Params]:
        return meta_gradient(
            learned_loss, task_loss, params, phi, batch, query, inner_lr, inner_steps, first_order, return_updated=True
        )

    return torch.compile(step, dynamic=False) if compile else step


def sgd_trace(
    loss_grad: Callable[[Params, Any], Params],
    metric: Callable[[Params, Any], torch.Tensor],
    params: Params,
    batch: Any,
    query: Any,
    lr: float,
    steps: int,
) -> tuple[torch.Tensor, Params]:
    """``steps`` plain SGD steps theta <- theta - lr * loss_grad(theta, batch); metric before and after each.

    Works batched: wrap with ``vmap`` to run many independent optimizees at once.
    """
    values = [metric(params, query)]
    for _ in range(steps):
        grads = loss_grad(params, batch)
        params = {name: value - lr * grads[name] for name, value in params.items()}  # Alg. 2, line 6
        values.append(metric(params, query))
    return torch.stack(values), params


def meta_test(
    optimizee: nn.Module,
    meta_loss: MetaLoss | None,
    tasks: Sequence[RegressionTask],
    init_params_per_task: Params,
    lr: float,
    steps: int,
    task_loss: LossFn = mse,
    metric: LossFn = mse,
    evaluate_on: str = "query",
) -> torch.Tensor:
    """Algorithm 2 on several tasks at once: SGD on the frozen meta-loss, or on ``task_loss`` if it is ``None``.

    :param init_params_per_task: optimizee parameters with a leading task dimension.
    :param evaluate_on: ``"query"`` (held-out points, the default) or ``"support"`` (the training
        points, as the paper's code did).
    :return: the metric per task and step, shape ``(n_tasks, steps + 1)`` (column 0: before training).
    """
    if evaluate_on not in ("query", "support"):
        raise ValueError(f"evaluate_on must be 'query' or 'support', got {evaluate_on!r}.")
    x_s = torch.stack([t.x_support for t in tasks])
    y_s = torch.stack([t.y_support for t in tasks])
    if evaluate_on == "query":
        x_q, y_q = torch.stack([t.x_query for t in tasks]), torch.stack([t.y_query for t in tasks])
    else:
        x_q, y_q = x_s, y_s

    if meta_loss is None:
        train_loss = task_loss_fn(optimizee, task_loss)
    else:
        frozen = {name: p.detach() for name, p in meta_loss.named_parameters()}
        learned = learned_loss_fn(optimizee, meta_loss)

        def train_loss(params: Params, batch: Any) -> torch.Tensor:
            return learned(params, frozen, batch)

    metric_fn = task_loss_fn(optimizee, metric)

    def run(params: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        trace, _ = sgd_trace(grad(train_loss), metric_fn, params, (xs, ys), (xq, yq), lr, steps)
        return trace

    with torch.no_grad():
        return vmap(run)(init_params_per_task, x_s, y_s, x_q, y_q)


def stack_params(params: Sequence[Params]) -> Params:
    """Stack a list of parameter dictionaries along a new leading (task) dimension."""
    return {name: torch.stack([p[name] for p in params]) for name in params[0]}


__all__ = [
    "RegressionTask",
    "MetaTrainResult",
    "mse",
    "learned_loss_fn",
    "task_loss_fn",
    "init_params",
    "meta_train",
    "meta_test",
    "sgd_trace",
    "stack_params",
    "parameters_of",
]
