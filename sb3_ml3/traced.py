"""The first-order meta-gradient of a *live* inner update from what that update recorded, in one batched pass.

:func:`sb3_ml3.functional.meta_gradient` with ``first_order=True`` recomputes the K inner steps under
:func:`torch.func.grad` and differentiates the unrolled loop: K forward and backward passes with a graph, then a
backward pass through all of them. The inner update that an RL algorithm takes anyway (model-free ML3's policy
update) has already computed every step's point theta_k and gradient, so the outer step can reuse them.

With theta_k a constant inside each step's gradient (first order), an update of K steps is

    h_k = grad_theta L_learned(theta_k, phi; b_k)          (the raw gradient of minibatch b_k)
    g_k = c(||h_k||) h_k                                     (an optional global-norm clip)
    theta_K = theta_0 + sum_k Delta_k(g_1, ..., g_k)        (SGD: Delta_k = -alpha g_k; Adam: through its moments)

so that, with v = grad_theta L_T(theta_K),

    grad_phi L_T = sum_k (d h_k / d phi)^T w_k,   w_k = (d g_k / d h_k)^T u_k,   u_k = sum_{j>=k} (d Delta_j / d g_k)^T v.

The cotangents u_k of the step rule are elementwise recurrences over k (:func:`rule_cotangents`), the clip's is a
rank-one correction, and the remaining sum of mixed second derivatives is **one** ``vmap`` over the K steps of
d/dphi <grad_theta L_learned(theta_k, phi; b_k), w_k>: a few large tensor operations instead of K small graphs.
The result equals the unrolled first-order meta-gradient up to float rounding (tests/test_traced.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.func import grad, grad_and_value, vmap

from sb3_ml3.functional import SGD, Adam, InnerOptimizer, LearnedLossFn, Params, TaskLossFn

__all__ = ["InnerTrace", "decayed_cumsum", "rule_cotangents", "traced_meta_gradient"]


@dataclass
class InnerTrace:
    """What a live first-order inner update of K steps recorded, enough for its meta-gradient.

    :param rule: the step rule the update took (:class:`~sb3_ml3.functional.SGD` or ``Adam``).
    :param lr: its step size alpha.
    :param state: the rule's state before the first step (``None``: fresh), as ``rule.step`` reads it.
    :param phi: the meta-loss parameters the update used (detached): the trace is valid at this phi only.
    :param points: theta_k before each step (detached).
    :param batches: b_k, the minibatch of each step (dicts of tensors of equal shapes across steps).
    :param raw_grads: h_k = grad_theta L_learned(theta_k, phi; b_k), before any clip.
    :param scales: c_k, the factor each h_k was multiplied by (1 without a clip).
    :param scale_slopes: dc/dn at ||h_k|| where the factor depends on phi through h_k's own norm (a clip
        of the actor's gradient alone), 0 where it is a constant of the outer step (PPO's joint clip).
    :param final: theta_K, the updated parameters.
    """

    rule: InnerOptimizer
    lr: float
    state: Any
    phi: Params
    points: list[Params] = field(default_factory=list)
    batches: list[Mapping[str, torch.Tensor]] = field(default_factory=list)
    raw_grads: list[Params] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    scale_slopes: list[float] = field(default_factory=list)
    final: Params | None = None

    def record(self, point: Params, batch: Mapping[str, torch.Tensor], raw_grad: Params, scale: float = 1.0,
               scale_slope: float = 0.0) -> None:
        """Append one step (all tensors detached, not copied: pass a copy of parameters that change in place)."""
        self.points.append({k: v.detach() for k, v in point.items()})
        self.batches.append({k: v.detach() for k, v in batch.items() if isinstance(v, torch.Tensor)})
        self.raw_grads.append({k: v.detach() for k, v in raw_grad.items()})
        self.scales.append(float(scale))
        self.scale_slopes.append(float(scale_slope))

    def valid_for(self, phi: Mapping[str, torch.Tensor]) -> bool:
        """Whether this trace was recorded at ``phi`` and is complete."""
        return (self.final is not None and len(self.points) > 0 and set(phi) == set(self.phi)
                and all(torch.equal(phi[k].detach(), self.phi[k]) for k in self.phi))

    def to_dict(self) -> dict[str, Any]:
        """Tensors, numbers and strings only (``torch.load(weights_only=True)`` reads it back)."""
        state = None if self.state is None else list(self.state)
        rule = {"name": self.rule.name}
        if isinstance(self.rule, Adam):
            rule.update(betas=list(self.rule.betas), eps=self.rule.eps)
        return {"rule": rule, "lr": float(self.lr), "state": state, "phi": self.phi, "points": self.points,
                "batches": self.batches, "raw_grads": self.raw_grads, "scales": self.scales,
                "scale_slopes": self.scale_slopes, "final": self.final}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> InnerTrace:
        spec = saved["rule"]
        rule: InnerOptimizer = (Adam(tuple(spec["betas"]), spec["eps"]) if spec["name"] == "adam" else SGD())
        state = saved["state"]
        return cls(rule, float(saved["lr"]), None if state is None else tuple(state), dict(saved["phi"]),
                   list(saved["points"]), list(saved["batches"]), list(saved["raw_grads"]),
                   [float(s) for s in saved["scales"]], [float(s) for s in saved["scale_slopes"]], saved["final"])


def _flat(dicts: Sequence[Params], names: Sequence[str]) -> torch.Tensor:
    """(K, D): each dict's tensors concatenated in ``names`` order."""
    return torch.stack([torch.cat([d[n].reshape(-1) for n in names]) for d in dicts])


def rule_cotangents(rule: InnerOptimizer, state: Any, grads: torch.Tensor, lr: float, v: torch.Tensor,
                    names: Sequence[str] | None = None) -> torch.Tensor:
    """u_k = sum_{j>=k} (d Delta_j / d g_k)^T v for the K steps of ``rule`` taken with gradients ``grads`` (K, D).

    ``state`` is the rule's state before the first step (Adam's ``(step, exp_avg, exp_avg_sq)`` with dicts keyed
    by ``names``, flattened in that order). SGD: u_k = -alpha v. Adam: the moments m_k, s_k are linear
    recurrences in g, so the cotangents are the reverse recurrences A_k = a_k + beta1 A_{k+1}, B_k = b_k +
    beta2 B_{k+1} of d<v, Delta_k>/dm_k and d<v, Delta_k>/ds_k, and u_k = (1 - beta1) A_k + 2 (1 - beta2) g_k B_k.
    """
    if type(rule) is SGD:
        return (-lr * v).expand_as(grads)
    if type(rule) is not Adam:
        raise NotImplementedError(f"No first-order cotangents for the inner rule {type(rule).__name__}.")
    beta1, beta2 = rule.betas
    n_steps = grads.shape[0]
    if state is None:
        step0, m, s = 0, torch.zeros_like(v), torch.zeros_like(v)
    else:
        step0, exp_avg, exp_avg_sq = state
        assert names is not None, "names are needed to flatten Adam's state"
        m = torch.cat([exp_avg[n].reshape(-1) for n in names]).to(v.dtype)
        s = torch.cat([exp_avg_sq[n].reshape(-1) for n in names]).to(v.dtype)
    moments = decayed_cumsum((1 - beta1) * grads, beta1, m)  # m_k = beta1 m_{k-1} + (1 - beta1) g_k
    squares = decayed_cumsum((1 - beta2) * grads * grads, beta2, s)
    t = torch.arange(step0 + 1, step0 + n_steps + 1, dtype=torch.float64)
    alpha = (lr / (1 - beta1 ** t)).to(grads.dtype).unsqueeze(1)
    correction = torch.sqrt(1 - beta2 ** t).to(grads.dtype).unsqueeze(1)
    root = torch.sqrt(squares + 1e-30)
    denominator = root / correction + rule.eps
    a = -alpha * v / denominator  # d<v, Delta_k>/dm_k with Delta_k = -alpha_k m_k / (sqrt(s_k) / c_k + eps)
    b = alpha * v * moments / (denominator * denominator * 2 * correction * root)  # d<v, Delta_k>/ds_k
    acc_a = decayed_cumsum(a, beta1, reverse=True)
    acc_b = decayed_cumsum(b, beta2, reverse=True)
    return (1 - beta1) * acc_a + 2 * (1 - beta2) * grads * acc_b


def decayed_cumsum(x: torch.Tensor, beta: float, initial: torch.Tensor | None = None,
                   reverse: bool = False) -> torch.Tensor:
    """y_k = beta y_{k-1} + x_k along dim 0 (y_{-1} = ``initial``, else 0), or y_k = x_k + beta y_{k+1} with
    ``reverse``: one fused ``add`` per step, written in place into the result (a vectorised prefix sum with
    beta^-k weights costs more here, in float64 temporaries, than the K small kernels)."""
    out = torch.empty_like(x)
    order = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    previous = torch.zeros_like(x[0]) if initial is None else initial.to(x.dtype)
    for k in order:
        torch.add(x[k], previous, alpha=beta, out=out[k])
        previous = out[k]
    return out


def traced_meta_gradient(learned_loss: LearnedLossFn, task_loss: TaskLossFn, trace: InnerTrace,
                         meta_params: Params, query: Any, chunk: int = 128) -> tuple[Params, torch.Tensor]:
    """grad_phi L_T(theta_K(phi)) and L_T(theta_K), first order through the traced update (module docstring).

    ``meta_params`` must be the phi the trace was recorded at (:meth:`InnerTrace.valid_for`); the minibatches
    must share their shapes (they are stacked for ``vmap``). ``chunk`` steps go through one ``vmap`` at a time,
    which bounds the memory of the mixed second derivatives for long updates.
    """
    assert trace.final is not None and trace.points, "an empty or unfinished trace"
    names = list(trace.final)
    v_dict, value = grad_and_value(task_loss)(trace.final, query)
    v = torch.cat([v_dict[n].reshape(-1) for n in names])
    raw = _flat(trace.raw_grads, names)
    scales = torch.tensor(trace.scales, dtype=raw.dtype).unsqueeze(1)
    u = rule_cotangents(trace.rule, trace.state, raw * scales, trace.lr, v, names)
    w = scales * u  # (d g_k / d h_k)^T u_k for a constant factor ...
    slopes = torch.tensor(trace.scale_slopes, dtype=raw.dtype)
    if bool((slopes != 0).any()):  # ... plus the clip's rank-one term where the factor is c(||h_k||)
        norms = torch.linalg.vector_norm(raw, dim=1).clamp_min(1e-12)
        w = w + (slopes * (raw * u).sum(1) / norms).unsqueeze(1) * raw
    sizes = [trace.final[n].numel() for n in names]
    w_stacked = {n: part.reshape(len(trace.points), *trace.final[n].shape)
                 for n, part in zip(names, torch.split(w, sizes, dim=1))}
    points = {n: torch.stack([p[n] for p in trace.points]) for n in names}
    keys = list(trace.batches[0])
    batches = {k: torch.stack([b[k] for b in trace.batches]) for k in keys}

    def directional(theta: Params, batch: dict[str, torch.Tensor], cotangent: Params, phi: Params) -> torch.Tensor:
        h = grad(learned_loss)(theta, phi, batch)
        return sum((h[n] * cotangent[n]).sum() for n in names)

    grads: Params | None = None
    for start in range(0, len(trace.points), chunk):
        part = slice(start, start + chunk)
        args = tuple({k: v[part] for k, v in d.items()} for d in (points, batches, w_stacked))

        def total(phi: Params, args: tuple[Params, ...] = args) -> torch.Tensor:
            return vmap(directional, in_dims=(0, 0, 0, None))(*args, phi).sum()

        g = grad(total)(meta_params)
        grads = g if grads is None else {k: grads[k] + g[k] for k in g}
    assert grads is not None
    return grads, value.detach()
