"""iLQR trajectory optimisation with optional box constraints on the action, for torch dynamics and costs.

The baseline of the paper's model-based experiments (Sec. IV.B.3, "a classical iLQR-based trajectory
optimisation", Tassa et al. [29]): given differentiable dynamics ``x' = f(x, u)``, a running cost
``l(x, u, t)`` and a final cost ``l_f(x)``, iLQR minimises

    J(u_0..u_{T-1}) = sum_t l(x_t, u_t, t) + l_f(x_T),   x_0 given,  x_{t+1} = f(x_t, u_t)

by repeating (Li & Todorov 2004; Tassa, Erez & Todorov 2012):

1. linearise ``f`` and take second-order expansions of the costs along the current trajectory
   (derivatives from :mod:`torch.func`, so any torch-differentiable model works);
2. a backward Riccati-like pass gives an open-loop change ``k_t`` and a feedback gain ``K_t``;
   with box constraints ``low <= u <= high`` each ``k_t`` solves the box QP of Tassa, Mansard &
   Todorov 2014 (control-limited DDP): the rows of ``K_t`` for clamped action dimensions are zero;
3. a forward pass ``u_t <- clip(u_t + a k_t + K_t (x_new_t - x_t))`` with a backtracking line search
   on ``a``; Levenberg-Marquardt regularisation ``mu`` of ``Q_uu`` grows when a pass fails.

On a linear system with quadratic costs the first iteration already lands on the finite-horizon LQR
optimum (``tests/test_ilqr.py`` checks this against the Riccati recursion). One iteration is one
"policy update" in the paper's Fig. 6b; :attr:`ILQRResult.history` keeps the trajectory after each.

Everything runs in float64 on the CPU: the problems here are small (state and action of a few
dimensions, horizons of tens of steps) and the backward pass is a loop over time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.func import hessian, jacrev, vmap

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RunningCost = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
FinalCost = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["ILQRResult", "ilqr", "rollout", "trajectory_cost", "box_qp"]


@dataclass
class ILQRResult:
    """What :func:`ilqr` found.

    :ivar actions: the optimised actions ``(T, m)``.
    :ivar states: their trajectory ``(T + 1, n)`` from ``x0``.
    :ivar cost: J of that trajectory.
    :ivar costs: J after each iteration, ``costs[0]`` the initial actions' cost.
    :ivar history: ``(states, actions)`` after each iteration, ``history[0]`` the initial ones; an
        iteration whose forward pass found no decrease repeats the previous entry.
    :ivar iterations: iterations run (backward + forward pass each).
    :ivar converged: whether the relative decrease of J fell below ``tolerance`` (rather than the
        iteration budget or the regularisation running out).
    """

    actions: torch.Tensor
    states: torch.Tensor
    cost: float
    costs: list[float] = field(default_factory=list)
    history: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False


def rollout(dynamics: Dynamics, x0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The states ``(T + 1, n)`` of ``actions (T, m)`` applied from ``x0 (n,)``."""
    states = [x0]
    for u in actions:
        states.append(dynamics(states[-1], u))
    return torch.stack(states)


def trajectory_cost(running_cost: RunningCost, final_cost: FinalCost | None, states: torch.Tensor,
                    actions: torch.Tensor) -> torch.Tensor:
    """J = sum_t l(x_t, u_t, t) + l_f(x_T) of a trajectory (``states (T + 1, n)``, ``actions (T, m)``)."""
    steps = torch.arange(len(actions), dtype=states.dtype)
    total = vmap(running_cost)(states[:-1], actions, steps).sum()
    return total + (final_cost(states[-1]) if final_cost is not None else 0.0)


def box_qp(hessian_matrix: torch.Tensor, gradient: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
           start: torch.Tensor | None = None, max_iterations: int = 100,
           tolerance: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """min_d 0.5 d'Hd + g'd subject to lower <= d <= upper, by projected Newton (Tassa et al. 2014, Alg. 3).

    ``H`` must be positive definite. Returns the minimiser and the mask of *free* dimensions (not held
    at a bound by a gradient pointing outwards); the caller's feedback gain uses only the free rows.
    """
    if bool((lower > upper).any()):
        raise ValueError(f"box_qp needs lower <= upper, got lower={lower.tolist()} upper={upper.tolist()}.")
    d = torch.zeros_like(gradient) if start is None else start.clone()
    d = torch.minimum(torch.maximum(d, lower), upper)
    free = torch.ones_like(gradient, dtype=torch.bool)

    def value(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * z @ hessian_matrix @ z + gradient @ z

    for _ in range(max_iterations):
        g = gradient + hessian_matrix @ d
        clamped = ((d <= lower) & (g > 0)) | ((d >= upper) & (g < 0))
        free = ~clamped
        if not bool(free.any()) or float(g[free].abs().max()) < tolerance:
            break
        step = torch.zeros_like(d)
        h_free = hessian_matrix[free][:, free]
        step[free] = -torch.linalg.solve(h_free, g[free])  # Newton step on the free subspace
        old, a = value(d), 1.0
        while a > 1e-12:  # projected backtracking (Armijo)
            candidate = torch.minimum(torch.maximum(d + a * step, lower), upper)
            if value(candidate) <= old + 0.1 * g @ (candidate - d):
                break
            a *= 0.5
        if a <= 1e-12 or float((candidate - d).abs().max()) < tolerance:
            d = candidate if a > 1e-12 else d
            break
        d = candidate
    g = gradient + hessian_matrix @ d
    free = ~(((d <= lower) & (g > 0)) | ((d >= upper) & (g < 0)))
    return d, free


def _expansions(dynamics: Dynamics, running_cost: RunningCost, final_cost: FinalCost | None,
                states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """f_x, f_u, l_x, l_u, l_xx, l_uu, l_ux along the trajectory (stacked over t) and l_f's V_x, V_xx."""
    x, u = states[:-1], actions
    t = torch.arange(len(actions), dtype=states.dtype)
    f_x, f_u = vmap(jacrev(dynamics, argnums=(0, 1)))(x, u)
    l_x, l_u = vmap(jacrev(running_cost, argnums=(0, 1)))(x, u, t)
    (l_xx, l_xu), (_, l_uu) = vmap(hessian(running_cost, argnums=(0, 1)))(x, u, t)
    n = states.shape[-1]
    if final_cost is None:
        v_x, v_xx = torch.zeros(n, dtype=states.dtype), torch.zeros(n, n, dtype=states.dtype)
    else:
        v_x, v_xx = jacrev(final_cost)(states[-1]), hessian(final_cost)(states[-1])
    return f_x, f_u, l_x, l_u, l_xx, l_uu, l_xu.transpose(-1, -2), v_x, v_xx


def _backward_pass(expansions: tuple[torch.Tensor, ...], actions: torch.Tensor, mu: float,
                   low: torch.Tensor | None, high: torch.Tensor | None):
    """Gains (k, K) and the expected decrease terms, or None where Q_uu + mu I is not positive definite."""
    f_x, f_u, l_x, l_u, l_xx, l_uu, l_ux, v_x, v_xx = expansions
    horizon, m = actions.shape
    k = torch.zeros_like(actions)
    K = torch.zeros(horizon, m, f_x.shape[-1], dtype=actions.dtype)
    expected = torch.zeros(2, dtype=actions.dtype)  # dJ(a) ~ a * expected[0] + a^2 * expected[1]
    eye = torch.eye(m, dtype=actions.dtype)
    for t in reversed(range(horizon)):
        q_x = l_x[t] + f_x[t].T @ v_x
        q_u = l_u[t] + f_u[t].T @ v_x
        q_xx = l_xx[t] + f_x[t].T @ v_xx @ f_x[t]
        q_uu = l_uu[t] + f_u[t].T @ v_xx @ f_u[t]
        q_ux = l_ux[t] + f_u[t].T @ v_xx @ f_x[t]
        q_uu_reg = 0.5 * (q_uu + q_uu.T) + mu * eye
        if bool((torch.linalg.eigvalsh(q_uu_reg) <= 0).any()):
            return None
        if low is None:
            k[t] = -torch.linalg.solve(q_uu_reg, q_u)
            K[t] = -torch.linalg.solve(q_uu_reg, q_ux)
        else:
            k[t], free = box_qp(q_uu_reg, q_u, low - actions[t], high - actions[t],
                                start=k[t + 1] if t + 1 < horizon else None)
            if bool(free.any()):  # clamped action dimensions get no feedback (Tassa et al. 2014)
                gain = -torch.linalg.solve(q_uu_reg[free][:, free], q_ux[free])
                K[t][free] = gain
        expected += torch.stack([k[t] @ q_u, 0.5 * k[t] @ q_uu @ k[t]])
        v_x = q_x + K[t].T @ q_uu @ k[t] + K[t].T @ q_u + q_ux.T @ k[t]
        v_xx = q_xx + K[t].T @ q_uu @ K[t] + K[t].T @ q_ux + q_ux.T @ K[t]
        v_xx = 0.5 * (v_xx + v_xx.T)
    return k, K, expected


def ilqr(
    dynamics: Dynamics,
    running_cost: RunningCost,
    x0: torch.Tensor,
    initial_actions: torch.Tensor,
    final_cost: FinalCost | None = None,
    action_low: Sequence[float] | torch.Tensor | float | None = None,
    action_high: Sequence[float] | torch.Tensor | float | None = None,
    max_iterations: int = 50,
    tolerance: float = 1e-7,
    mu_init: float = 1e-6,
    mu_max: float = 1e10,
    line_search: Sequence[float] = tuple(0.5 ** i for i in range(11)),
) -> ILQRResult:
    """Minimise J(u) = sum_t l(x_t, u_t, t) + l_f(x_T) over open-loop actions by (box-constrained) iLQR.

    :param dynamics: ``f(x (n,), u (m,)) -> x' (n,)``, differentiable in both (a batched function such
        as an env's ``torch_step`` works: it is called on single states).
    :param running_cost: ``l(x (n,), u (m,), t) -> scalar``, twice differentiable in x and u; ``t`` is the
        step index as a float64 scalar tensor (for time-varying costs).
    :param x0: the start state ``(n,)``.
    :param initial_actions: the actions ``(T, m)`` iLQR starts from (e.g. zeros).
    :param final_cost: ``l_f(x (n,)) -> scalar`` or None (no terminal cost).
    :param action_low: lower bounds of the action (a number or one per dimension); None: unbounded.
    :param action_high: upper bounds, given together with ``action_low``.
    :param max_iterations: the iteration budget.
    :param tolerance: stop when an accepted iteration lowers J by less than ``tolerance * |J|``.
    :param mu_init: the first Levenberg-Marquardt regularisation of Q_uu.
    :param mu_max: give up (not converged) when the regularisation passes this.
    :param line_search: the step sizes tried in the forward pass, largest first.
    :return: an :class:`ILQRResult`.
    """
    x0 = torch.as_tensor(x0, dtype=torch.float64).detach()
    actions = torch.as_tensor(initial_actions, dtype=torch.float64).detach().clone()
    if x0.dim() != 1:
        raise ValueError(f"ilqr optimises one trajectory: x0 must have shape (n,), got {tuple(x0.shape)}.")
    if actions.dim() != 2 or len(actions) < 1:
        raise ValueError(f"initial_actions must have shape (T, m) with T >= 1, got {tuple(actions.shape)}.")
    if (action_low is None) != (action_high is None):
        raise ValueError("Give both action_low and action_high for a box constraint, or neither.")
    if max_iterations < 0 or not tolerance >= 0 or not 0 <= mu_init <= mu_max or not line_search:
        raise ValueError("Need max_iterations >= 0, tolerance >= 0, 0 <= mu_init <= mu_max and a line search.")
    low = high = None
    if action_low is not None:
        m = actions.shape[1]
        low = torch.as_tensor(action_low, dtype=torch.float64).expand(m).clone()
        high = torch.as_tensor(action_high, dtype=torch.float64).expand(m).clone()
        if bool((low > high).any()):
            raise ValueError(f"action_low {low.tolist()} must not exceed action_high {high.tolist()}.")
        actions = torch.minimum(torch.maximum(actions, low), high)
    with torch.no_grad():
        states = rollout(dynamics, x0, actions)
        cost = float(trajectory_cost(running_cost, final_cost, states, actions))
    if not torch.isfinite(states).all() or cost != cost:
        raise ValueError("The initial actions give a non-finite trajectory or cost; start from other actions.")
    result = ILQRResult(actions, states, cost, [cost], [(states, actions)])
    mu = mu_init
    for _ in range(max_iterations):
        expansions = _expansions(dynamics, running_cost, final_cost, states, actions)
        accepted = False
        while mu <= mu_max and not accepted:
            gains = _backward_pass(expansions, actions, mu, low, high)
            if gains is None:
                mu = max(mu * 10.0, 1e-6)
                continue
            k, K, expected = gains
            for a in line_search:
                new_states, new_actions = _forward_pass(dynamics, x0, states, actions, k, K, a, low, high)
                with torch.no_grad():
                    new_cost = float(trajectory_cost(running_cost, final_cost, new_states, new_actions))
                predicted = -float(a * expected[0] + a * a * expected[1])
                if new_cost == new_cost and new_cost < cost and (predicted <= 0 or (cost - new_cost) / predicted > 1e-4):
                    accepted = True
                    break
            if not accepted:
                mu = max(mu * 10.0, 1e-6)
        result.iterations += 1
        if not accepted:  # the regularisation ran out: a local minimum as far as iLQR can tell
            result.costs.append(cost)
            result.history.append((states, actions))
            break
        improvement = cost - new_cost
        states, actions, cost = new_states, new_actions, new_cost
        mu = max(mu / 10.0, mu_init)
        result.costs.append(cost)
        result.history.append((states, actions))
        if improvement < tolerance * max(abs(cost), 1e-12):
            result.converged = True
            break
    result.actions, result.states, result.cost = actions, states, cost
    return result


def _forward_pass(dynamics: Dynamics, x0: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                  k: torch.Tensor, K: torch.Tensor, a: float, low: torch.Tensor | None,
                  high: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """u_t = clip(u_t + a k_t + K_t (x_new_t - x_t)) rolled out from x0."""
    with torch.no_grad():
        x = x0
        new_states, new_actions = [x0], []
        for t in range(len(actions)):
            u = actions[t] + a * k[t] + K[t] @ (x - states[t])
            if low is not None:
                u = torch.minimum(torch.maximum(u, low), high)
            x = dynamics(x, u)
            new_states.append(x)
            new_actions.append(u)
    return torch.stack(new_states), torch.stack(new_actions)
