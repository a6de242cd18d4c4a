"""The ML3 inner and outer step as pure functions on :mod:`torch.func`.

Everything here is written once and called by every experiment (supervised, model-based and
model-free ML3). The caller supplies two pure functions of explicit parameter dictionaries:

* ``learned_loss(params, meta_params, batch) -> scalar``: the learned loss
  L_learned = E[M_phi(y, f_theta(x))] (Eq. 3) of the optimizee with parameters ``params`` under
  the meta-loss with parameters ``meta_params`` (phi);
* ``task_loss(params, query) -> scalar``: the task loss L_T of the optimizee (Eq. 5, 7).

The **inner step** (Eq. 2) is theta' = theta - alpha * grad_theta L_learned(theta, phi), repeated K
times. Because it is computed with :func:`torch.func.grad`, theta' remains a differentiable function
of phi. The **outer step** differentiates L_T(theta'(phi)) with respect to phi (Eq. 5-6); the
gradient w.r.t. phi flows only through grad_theta M_phi, i.e. through the mixed second derivative.

``vmap`` over a leading task dimension batches independent tasks in one call
(:func:`batched_meta_gradient`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vjp, vmap

from sb3_ml3.inner_optimizers import (  # re-exported: the inner step rules
    INNER_OPTIMIZERS,
    SGD,
    Adam,
    InnerOptimizer,
)

Params = dict[str, torch.Tensor]
LearnedLossFn = Callable[[Params, Params, Any], torch.Tensor]
TaskLossFn = Callable[[Params, Any], torch.Tensor]

__all__ = [
    "INNER_OPTIMIZERS",
    "SGD",
    "Adam",
    "InnerOptimizer",
    "MetaStepResult",
    "Params",
    "apply_meta_gradient",
    "batched_meta_gradient",
    "clip_factor",
    "clip_factor_slope",
    "clip_grads",
    "functional_call",
    "global_norm",
    "inner_update",
    "make_meta_optimizer",
    "meta_gradient",
    "parameters_of",
]


def parameters_of(module: nn.Module, requires_grad: bool = False) -> Params:
    """Detached copies of a module's parameters, keyed by name, for use with :func:`functional_call`."""
    return {name: p.detach().clone().requires_grad_(requires_grad) for name, p in module.named_parameters()}


def _steps_and_batches(batch: Any, steps: int | None) -> list[Any]:
    if isinstance(batch, list):
        if steps is not None and steps != len(batch):
            raise ValueError(f"inner_update got {len(batch)} minibatches but steps={steps}; give one or the other.")
        if not batch:
            raise ValueError("inner_update needs at least one minibatch.")
        return batch
    steps = 1 if steps is None else steps
    if steps < 1:
        raise ValueError(f"The number of inner steps must be at least 1, got {steps}.")
    return [batch] * steps



def inner_update(
    learned_loss: LearnedLossFn,
    params: Params,
    meta_params: Params,
    batch: Any,
    inner_lr: float,
    steps: int | None = None,
    first_order: bool = False,
    max_grad_norm: float | None = None,
    optimizer: InnerOptimizer | None = None,
    optimizer_state: Any = None,
    truncate: int | None = None,
) -> Params:
    """K steps of the optimizee on the learned loss (Eq. 2; plain SGD by default), differentiable w.r.t. phi.

    :param learned_loss: ``(params, meta_params, batch) -> scalar`` L_learned.
    :param params: the optimizee parameters theta.
    :param meta_params: the meta-loss parameters phi.
    :param batch: one batch reused for every step, or a ``list`` of K minibatches (one per step).
    :param inner_lr: the inner step size alpha.
    :param steps: K, the number of unrolled steps (default 1, as in the paper; or ``len(batch)``).
    :param first_order: drop the dependence of each step's gradient on the earlier steps
        (theta_k enters grad_theta M_phi as a constant). The meta-gradient then keeps the direct
        terms -alpha * d/dphi grad_theta M_phi(theta_k) of every step but no products of Hessians
        through the unroll: cheaper and more stable for long unrolls; exact for K = 1.
    :param max_grad_norm: if given, each step's gradient is rescaled to at most this global norm
        (:func:`clip_grads`), which bounds the step whatever phi does.
    :param optimizer: the step rule (:class:`SGD` when ``None``, the paper's; or :class:`Adam`).
    :param optimizer_state: the rule's state before the first step (``None``: fresh).
    :param truncate: differentiate through only the last ``truncate`` steps (truncated backpropagation):
        the earlier steps take phi as a constant, so that no graph is kept for them and the memory of
        the meta-gradient stays that of ``truncate`` steps however long the unroll (``None``: all K).
    :return: theta_K as a new dictionary.
    """
    rule = SGD() if optimizer is None else optimizer
    state = optimizer_state
    gradient = grad(learned_loss)
    minibatches = _steps_and_batches(batch, steps)
    if truncate is not None and truncate < 1:
        raise ValueError(f"truncate must be at least 1 step (or None for all), got {truncate}.")
    constant_steps = 0 if truncate is None else max(len(minibatches) - truncate, 0)
    constant_phi = {k: v.detach() for k, v in meta_params.items()} if constant_steps else meta_params
    for index, minibatch in enumerate(minibatches):
        constant = index < constant_steps
        point = {k: v.detach() for k, v in params.items()} if first_order or constant else params
        grads = gradient(point, constant_phi if constant else meta_params, minibatch)
        if max_grad_norm is not None:
            grads = clip_grads(grads, max_grad_norm)
        params, state = rule.step(point if constant else params, grads, inner_lr, state)  # Eq. 2
    return params


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all tensors together; works under ``grad`` and ``vmap`` (``_foreach_norm`` does not vmap)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def clip_factor(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, max_norm / (norm + 1e-6)): the factor :func:`clip_grads` (and ``torch.nn.utils.clip_grad_norm_``)
    rescales gradients of global norm ``norm`` by."""
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def clip_factor_slope(norm: float, max_norm: float) -> float:
    """d clip_factor / d norm at ``norm``: -max_norm / (norm + 1e-6)^2 where the clip is active, else 0."""
    return -max_norm / (norm + 1e-6) ** 2 if max_norm / (norm + 1e-6) < 1.0 else 0.0


def clip_grads(
    grads: Mapping[str, torch.Tensor], max_norm: float, norm: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Rescale gradients to a global norm of at most ``max_norm``; differentiable, no data-dependent branch.

    ``norm``: their :func:`global_norm`, when the caller has it already.
    """
    if norm is None:
        norm = global_norm(list(grads.values()))
    scale = clip_factor(norm, max_norm)
    return {name: g * scale for name, g in grads.items()}


def meta_gradient(
    learned_loss: LearnedLossFn,
    task_loss: TaskLossFn,
    params: Params,
    meta_params: Params,
    batch: Any,
    query: Any,
    inner_lr: float,
    steps: int | None = None,
    first_order: bool = False,
    return_updated: bool = False,
    max_grad_norm: float | None = None,
    optimizer: InnerOptimizer | None = None,
    optimizer_state: Any = None,
    truncate: int | None = None,
    low_memory: bool = False,
) -> tuple[Params, torch.Tensor] | tuple[Params, torch.Tensor, Params]:
    """The outer-step gradient grad_phi L_T(theta'(phi)) and the task loss value (Eq. 5-6).

    ``params`` are treated as constants (theta_0 does not depend on phi). With ``return_updated``
    the updated optimizee theta' (detached) comes back as a third value, so that a caller who keeps
    training theta (Alg. 1 with M > 1 inner steps before a reset) need not recompute it.
    ``first_order`` and ``truncate``: see :func:`inner_update`. ``low_memory`` with ``first_order`` and plain SGD
    (no clipping, no truncation): the same first-order meta-gradient in the memory of one step however large K,
    for 1.3-1.5x the time (K vector-Jacobian products, see :func:`_first_order_sgd`); otherwise it has no effect.
    """

    plain_sgd = optimizer is None or type(optimizer) is SGD
    if low_memory and first_order and truncate is None and max_grad_norm is None and plain_sgd:
        grads, value, updated = _first_order_sgd(learned_loss, task_loss, params, meta_params,
                                                 _steps_and_batches(batch, steps), query, inner_lr)
        return (grads, value, updated) if return_updated else (grads, value)

    def objective(phi: Params) -> tuple[torch.Tensor, Params]:
        updated = inner_update(learned_loss, params, phi, batch, inner_lr, steps, first_order, max_grad_norm,
                               optimizer, optimizer_state, truncate)
        return task_loss(updated, query), updated

    (grads, (value, updated)) = grad_and_value(objective, has_aux=True)(meta_params)
    if return_updated:
        return grads, value, updated
    return grads, value


def _first_order_sgd(
    learned_loss: LearnedLossFn,
    task_loss: TaskLossFn,
    params: Params,
    meta_params: Params,
    minibatches: list[Any],
    query: Any,
    inner_lr: float,
) -> tuple[Params, torch.Tensor, Params]:
    """The first-order meta-gradient of K plain SGD steps in the memory of one step.

    With theta_k a constant inside each step's gradient g_k = grad_theta L_learned(theta_k, phi), SGD gives
    theta_K = theta_0 - alpha sum_k g_k(phi), so grad_phi L_T(theta_K) = -alpha sum_k (d g_k / d phi)^T v with
    v = grad_theta L_T(theta_K). The K steps run without a graph (keeping only the K parameter vectors
    theta_k), then each step's vector-Jacobian product is taken and freed in turn: memory stays flat in K,
    where differentiating the unrolled loop keeps every step's graph.
    """
    gradient = grad(learned_loss)
    constant_phi = {k: v.detach() for k, v in meta_params.items()}
    theta = {k: v.detach() for k, v in params.items()}
    points = []
    for minibatch in minibatches:
        points.append(theta)
        step = gradient(theta, constant_phi, minibatch)
        theta = {k: (v - inner_lr * step[k]).detach() for k, v in theta.items()}  # Eq. 2
    v_grad, value = grad_and_value(task_loss)(theta, query)
    total: Params | None = None
    for point, minibatch in zip(points, minibatches):
        _, pullback = vjp(lambda phi, point=point, minibatch=minibatch: gradient(point, phi, minibatch), meta_params)
        (part,) = pullback(v_grad)
        total = part if total is None else {k: total[k] + part[k] for k in total}
    assert total is not None
    return {k: -inner_lr * g for k, g in total.items()}, value, theta


def batched_meta_gradient(
    learned_loss: LearnedLossFn,
    task_loss: TaskLossFn,
    params: Params,
    meta_params: Params,
    batch: Any,
    query: Any,
    inner_lr: float,
    steps: int | None = None,
    first_order: bool = False,
    params_batched: bool = True,
) -> tuple[Params, torch.Tensor]:
    """Meta-gradients of N independent tasks in one vectorised call (``vmap`` over dim 0).

    :param batch: a pytree whose tensors have a leading task dimension N (a list of K minibatches
        for K steps, each with the task dimension).
    :param query: the task-loss data, with the same leading task dimension.
    :param params_batched: whether ``params`` carry a leading task dimension (one optimizee per
        task) or are shared by all tasks.
    :return: the meta-gradient averaged over tasks, and the N per-task task losses.
    """

    def one_task(theta: Params, phi: Params, task_batch: Any, task_query: Any) -> tuple[Params, torch.Tensor]:
        return meta_gradient(learned_loss, task_loss, theta, phi, task_batch, task_query, inner_lr, steps, first_order)

    grads, values = vmap(one_task, in_dims=(0 if params_batched else None, None, 0, 0))(params, meta_params, batch, query)
    return {name: g.mean(0) for name, g in grads.items()}, values


def make_meta_optimizer(parameters: Any, lr: float) -> torch.optim.Optimizer:
    """Adam for phi (the outer step's optimizer), fused where PyTorch has the kernel (3x faster on CPU).
    ``parameters`` is an iterable of tensors or of parameter groups (dicts, as torch.optim takes them)."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # e.g. a device or dtype without the fused kernel
        return torch.optim.Adam(parameters, lr=lr)


@dataclass
class MetaStepResult:
    """What one outer step did: whether phi changed, and the figures to log."""

    applied: bool
    task_loss: float
    grad_norm: float
    reason: str = ""


def apply_meta_gradient(
    meta_optimizer: torch.optim.Optimizer,
    meta_loss: nn.Module,
    grads: Mapping[str, torch.Tensor],
    task_loss: torch.Tensor | float,
    max_grad_norm: float | None = None,
) -> MetaStepResult:
    """The outer step phi <- phi - eta * grad_phi L_T, through ``meta_optimizer``; refuses bad values.

    A non-finite task loss or meta-gradient never reaches phi: the step is skipped and the result
    says why, so that the caller counts and reports it. ``max_grad_norm`` clips the meta-gradient's
    global norm.
    """
    value = float(task_loss.detach()) if isinstance(task_loss, torch.Tensor) else float(task_loss)
    detached = [g.detach() for g in grads.values()]
    # eager and outside any transform here, so the one-kernel _foreach_norm can serve (3x cheaper than global_norm)
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(detached)))) if detached else 0.0
    if not math.isfinite(value):
        return MetaStepResult(False, value, norm, "non-finite task loss")
    if not math.isfinite(norm):
        return MetaStepResult(False, value, norm, "non-finite meta-gradient")
    scale = 1.0
    if max_grad_norm is not None and norm > max_grad_norm:
        scale = max_grad_norm / (norm + 1e-12)
    named = dict(meta_loss.named_parameters())
    unknown = set(grads) - set(named)
    if unknown:
        raise KeyError(f"Meta-gradient for unknown meta-loss parameters {sorted(unknown)}.")
    meta_optimizer.zero_grad(set_to_none=True)
    for (name, g), g_detached in zip(grads.items(), detached):
        # the gradient tensor itself when unscaled (the optimizer only reads .grad), a scaled copy otherwise
        named[name].grad = (g_detached if scale == 1.0 else g_detached * scale).to(named[name].dtype)
    meta_optimizer.step()
    return MetaStepResult(True, value, norm)
