"""The inner step's update rules as pure functions: theta' from (theta, grad, lr, state), differentiable in all.

The paper's inner step is plain SGD (Eq. 2). Adam is here so that a learned loss containing PPO's
surrogate can take PPO's own steps. Each rule also names the live ``torch.optim`` optimizer that takes
the same steps outside the outer step's graph, and reads that optimizer's state, so that the
differentiable recomputation of an update starts where the live update started.
:mod:`sb3_ml3.functional` re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.adam import adam as adam_kernel

Params = dict[str, torch.Tensor]

__all__ = ["INNER_OPTIMIZERS", "SGD", "Adam", "InnerOptimizer"]


class InnerOptimizer:
    """A pure inner-step rule: ``step(params, grads, lr, state) -> (params, state)``, differentiable in everything.

    The inner step of the paper is plain SGD (:class:`SGD`). :class:`Adam` lets a learned loss that contains
    PPO's surrogate take PPO's own steps (PPO optimises with Adam), so that ML3 starts from PPO's update and
    meta-training only has to improve on it. ``state`` is ``None`` for a fresh optimizer or what an earlier
    ``step`` returned; :meth:`from_torch` reads it from a live ``torch.optim`` optimizer, so that the
    differentiable recomputation of an update (the outer step) starts where the live update started.
    """

    name = "base"

    def step(self, params: Params, grads: Params, lr: float, state: Any) -> tuple[Params, Any]:
        raise NotImplementedError

    def torch_optimizer(self, parameters: Any, lr: float) -> torch.optim.Optimizer:
        """The live ``torch.optim`` optimizer that takes the steps this rule recomputes."""
        raise NotImplementedError

    def from_torch(self, optimizer: torch.optim.Optimizer, names: Mapping[torch.Tensor, str]) -> Any:
        return None

    def apply_(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """One live step of ``optimizer`` (made by :meth:`torch_optimizer`) on ``params`` with ``grads``, in place.

        The step ``optimizer.step()`` takes, with its state kept in ``optimizer.state``; subclasses take it
        without the per-call bookkeeping of ``torch.optim`` (hooks, grouping), which at the inner step's
        sizes costs more than the arithmetic.
        """
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()


class SGD(InnerOptimizer):
    """theta' = theta - alpha * g (Eq. 2): the paper's inner step. Stateless."""

    name = "sgd"

    def step(self, params: Params, grads: Params, lr: float, state: Any) -> tuple[Params, Any]:
        return {name: value - lr * grads[name] for name, value in params.items()}, state

    def torch_optimizer(self, parameters: Any, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(parameters, lr=lr, foreach=True)

    def apply_(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        group = optimizer.param_groups[0]
        if len(optimizer.param_groups) != 1 or group["momentum"] or group["weight_decay"] or group["maximize"]:
            return super().apply_(optimizer, params, grads)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-group["lr"])  # torch.optim.SGD's foreach step


class Adam(InnerOptimizer):
    """PyTorch's Adam (no weight decay, no amsgrad) written as a pure function, equal to ``torch.optim.Adam``.

    The state is ``(step, exp_avg, exp_avg_sq)``. The square root reads ``exp_avg_sq + 1e-30``: its derivative
    stays finite where a gradient component is exactly zero, and the value moves by less than float32 can show.
    """

    name = "adam"

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def step(self, params: Params, grads: Params, lr: float, state: Any) -> tuple[Params, Any]:
        beta1, beta2 = self.betas
        if state is None:
            state = (0, {k: torch.zeros_like(v) for k, v in params.items()},
                     {k: torch.zeros_like(v) for k, v in params.items()})
        step, exp_avg, exp_avg_sq = state
        step += 1
        exp_avg = {k: beta1 * exp_avg[k] + (1 - beta1) * grads[k] for k in params}
        exp_avg_sq = {k: beta2 * exp_avg_sq[k] + (1 - beta2) * grads[k] * grads[k] for k in params}
        step_size = lr / (1 - beta1 ** step)
        correction = math.sqrt(1 - beta2 ** step)
        updated = {
            k: v - step_size * exp_avg[k] / (torch.sqrt(exp_avg_sq[k] + 1e-30) / correction + self.eps)
            for k, v in params.items()
        }
        return updated, (step, exp_avg, exp_avg_sq)

    def torch_optimizer(self, parameters: Any, lr: float) -> torch.optim.Optimizer:
        # foreach: one kernel per operation over all tensors (the per-tensor loop costs more on small policies)
        return torch.optim.Adam(parameters, lr=lr, betas=self.betas, eps=self.eps, foreach=True)

    def apply_(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """torch's fused Adam kernel on CPU (one kernel for all tensors; equal to ``torch.optim.Adam`` up to
        rounding, ~1e-7 after hundreds of steps), with the state ``torch.optim.Adam`` keeps; else ``step()``."""
        group = optimizer.param_groups[0]
        if (len(optimizer.param_groups) != 1 or group["weight_decay"] or group["amsgrad"] or group["maximize"]
                or any(p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64) for p in params)):
            return super().apply_(optimizer, params, grads)
        steps, exp_avgs, exp_avg_sqs = [], [], []
        for p in params:
            state = optimizer.state[p]
            if not state:  # what torch.optim.Adam's first step creates
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            steps.append(state["step"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            adam_kernel(params, list(grads), exp_avgs, exp_avg_sqs, [], steps, fused=True, amsgrad=False,
                        beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=0.0, eps=group["eps"], maximize=False)

    def from_torch(self, optimizer: torch.optim.Optimizer, names: Mapping[torch.Tensor, str]) -> Any:
        """The state of a live ``torch.optim.Adam`` over the same parameters (``names``: tensor -> name), detached."""
        steps, exp_avg, exp_avg_sq = set(), {}, {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                st = optimizer.state.get(p)
                if not st:
                    return None  # a fresh optimizer: no step taken yet
                steps.add(int(st["step"]))
                exp_avg[names[p]] = st["exp_avg"].detach().clone()
                exp_avg_sq[names[p]] = st["exp_avg_sq"].detach().clone()
        if len(steps) != 1:
            raise ValueError(f"The Adam optimizer's parameters have different step counts {sorted(steps)}.")
        return steps.pop(), exp_avg, exp_avg_sq


#: The inner optimizers by name, as ``ML3(inner_optimizer=...)`` and the recipes spell them.
INNER_OPTIMIZERS: dict[str, type[InnerOptimizer]] = {"sgd": SGD, "adam": Adam}
