"""Model-based ML3's inner step (Algorithms 3 and 5): theta' from M_phi and its learned rate alpha(tau, g).

The same step at meta-train (states unrolled in the model P) and at meta-test (states of the real env), per policy
(the parameters carry the policies' leading dimension):

* ``"sgd"``, the paper's: theta' = theta - alpha grad_theta M_phi(tau, g), alpha = alpha_max sigmoid(.) per policy.
* ``"adam"``: :class:`sb3_ml3.functional.Adam` on M_phi, differentiable in phi, with the learned alpha as its step
  size (alpha_max then reads in Adam's units, e.g. 0.1). Plain SGD on a tanh-MLP policy is slow even towards a
  perfect target (REPORT.md: the IK + PD oracle's torques as the target reach 0.13 m in 40 updates; Adam reaches
  0.013 m in 20), which makes the arm's fold the best a few inner steps can do. Adam's ``eps`` is large (1e-2 by
  default): at PyTorch's 1e-8 the first step is alpha sign(grad), whose derivative in phi is zero, so the learned
  target would get no meta-gradient from it; with a large eps the step is a smooth function of the gradient (about
  alpha g / eps for small g). Adam's statistics live as long as the policy: across the K inner steps of an outer
  iteration, across outer iterations while ``policy_reset_every`` keeps the policy, and across meta-test updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call, grad

from sb3_ml3.functional import INNER_OPTIMIZERS, Adam, Params, inner_update
from sb3_ml3.model_based.mbrl_nets import LossAndRate, PolicyBatch


def make_learned_loss(policy: PolicyBatch, meta_loss: LossAndRate, pre_tanh: bool = False, rate: bool = True
                      ) -> Callable[[Params, Params, Any], torch.Tensor]:
    """``(theta, phi, batch) -> sum_b alpha_b M_b``: its theta-gradient is alpha_b grad M_b per policy.

    ``batch`` is ``(context, recorded actions)``, the policy reading the loss's context, or ``(policy features,
    context, recorded actions)``. ``pre_tanh``: M reads the policy's pre-tanh output u in place of the action, and
    u's current value (no gradient) in place of the recorded actions (equal to them up to the tanh). ``rate=False``:
    sum_b M_b, for a rule whose step size carries the rate (Adam's).
    """

    def learned_loss(params: Params, phi: Params, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        features, context, recorded = batch if len(batch) == 3 else (batch[0], *batch)
        if pre_tanh:
            action = policy(params, features, pre_tanh=True)
            recorded = action.detach()
        else:
            action = policy(params, features)
        loss, alpha = functional_call(meta_loss, phi, (context, action, recorded))
        return (alpha * loss).sum() if rate else loss.sum()

    return learned_loss


class InnerStep:
    """theta' = step(theta; M_phi, alpha) of one policy batch on one trajectory each (module docstring).

    :param policy: the policies' forward function.
    :param meta_loss: M_phi and its rate.
    :param optimizer: one of :data:`INNER_OPTIMIZERS`.
    :param adam_eps: Adam's eps (``"adam"`` only).
    :param pre_tanh: M reads the policy's pre-tanh output (``make_learned_loss``).
    """

    def __init__(self, policy: PolicyBatch, meta_loss: LossAndRate, optimizer: str = "sgd", adam_eps: float = 1e-2,
                 pre_tanh: bool = False) -> None:
        if optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"the inner step's optimizer must be one of {list(INNER_OPTIMIZERS)}, got {optimizer!r}.")
        if not adam_eps > 0:
            raise ValueError(f"adam_eps must be positive, got {adam_eps!r}.")
        self.policy, self.meta_loss, self.optimizer, self.pre_tanh = policy, meta_loss, optimizer, bool(pre_tanh)
        self.rule = Adam(eps=adam_eps) if optimizer == "adam" else None
        self.learned_loss = make_learned_loss(policy, meta_loss, pre_tanh)
        self._loss_gradient = grad(make_learned_loss(policy, meta_loss, pre_tanh, rate=False))  # Adam's: no rate

    def rate(self, params: Params, phi: Params, features: torch.Tensor, context: torch.Tensor,
             recorded: torch.Tensor) -> torch.Tensor:
        """alpha per policy ``(B,)``, differentiable in phi (the rate net reads the context and the actions taken)."""
        if self.pre_tanh:
            recorded = self.policy({k: v.detach() for k, v in params.items()}, features, pre_tanh=True)
        return functional_call(self.meta_loss, phi, (context, recorded, recorded))[1]

    def __call__(self, params: Params, phi: Params, features: torch.Tensor, recorded: torch.Tensor,
                 state: Any = None, context: torch.Tensor | None = None) -> tuple[Params, torch.Tensor, Any]:
        """``(theta', alpha (B,), the rule's state after the step)`` on a trajectory's policy ``features``
        ``(B, T, F)`` and recorded actions; M reads ``context`` (default: the same features). ``state`` is what the
        last call returned for these policies (``None``: fresh ones). Differentiable in phi (and theta)."""
        context = features if context is None else context
        alpha = self.rate(params, phi, features, context, recorded)
        if self.rule is None:
            return inner_update(self.learned_loss, params, phi, (features, context, recorded), 1.0), alpha, state
        grads = self._loss_gradient(params, phi, (features, context, recorded))
        updated, state = self.rule.step(params, grads, alpha.reshape(-1, *([1] * (grads["w0"].dim() - 1))), state)
        return updated, alpha, state


def state_as_tensors(state: Any) -> dict[str, Any]:
    """An inner step's state as a pytree of tensors only (``torch.func`` returns no ints), detached."""
    if state is None:
        return {}
    step, exp_avg, exp_avg_sq = state
    return {"step": torch.tensor(float(step)), "exp_avg": {k: v.detach() for k, v in exp_avg.items()},
            "exp_avg_sq": {k: v.detach() for k, v in exp_avg_sq.items()}}


def state_from_tensors(packed: dict[str, Any]) -> Any:
    """The inverse of :func:`state_as_tensors`."""
    if not packed:
        return None
    return int(packed["step"]), packed["exp_avg"], packed["exp_avg_sq"]


__all__ = ["InnerStep", "make_learned_loss", "state_as_tensors", "state_from_tensors"]
