"""iLQR: the finite-horizon LQR optimum (Riccati), the box-constrained optimum, the box QP, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from sb3_ml3.model_based.ilqr import box_qp, ilqr, rollout, trajectory_cost

T, N, M = 20, 3, 2


def _lq_problem():
    g = torch.Generator().manual_seed(0)
    A = torch.eye(N, dtype=torch.float64) + 0.1 * torch.randn(N, N, generator=g, dtype=torch.float64)
    B = torch.randn(N, M, generator=g, dtype=torch.float64)
    Q = torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    R = 0.1 * torch.eye(M, dtype=torch.float64)
    Qf = 5.0 * torch.eye(N, dtype=torch.float64)
    x0 = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    return A, B, Q, R, Qf, x0


def _riccati(A, B, Q, R, Qf, x0):
    """Closed-form finite-horizon LQR for l = x'Qx + u'Ru, l_f = x'Qf x: u_t = -K_t x_t."""
    P, gains = Qf, []
    for _ in range(T):
        K = torch.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        gains.append(K)
        P = Q + A.T @ P @ (A - B @ K)
    x, actions = x0, []
    for K in reversed(gains):
        u = -K @ x
        actions.append(u)
        x = A @ x + B @ u
    return torch.stack(actions)


def test_ilqr_solves_linear_quadratic_problem_to_the_riccati_optimum():
    A, B, Q, R, Qf, x0 = _lq_problem()
    result = ilqr(lambda x, u: A @ x + B @ u, lambda x, u, t: x @ Q @ x + u @ R @ u, x0, torch.zeros(T, M),
                  final_cost=lambda x: x @ Qf @ x)
    expected = _riccati(A, B, Q, R, Qf, x0)
    assert torch.allclose(result.actions, expected, atol=1e-8)
    assert result.converged and result.iterations <= 3
    assert result.costs[1] == pytest.approx(result.cost, rel=1e-9)  # one iteration lands on the optimum
    assert torch.allclose(result.states, rollout(lambda x, u: A @ x + B @ u, x0, result.actions))


def test_box_constrained_ilqr_matches_a_bounded_quasi_newton_solver():
    A, B, Q, R, Qf, x0 = _lq_problem()
    running, final = (lambda x, u, t: x @ Q @ x + u @ R @ u), (lambda x: x @ Qf @ x)
    result = ilqr(lambda x, u: A @ x + B @ u, running, x0, torch.zeros(T, M), final_cost=final,
                  action_low=-0.3, action_high=0.3)

    def cost(flat):
        u = torch.tensor(flat.reshape(T, M))
        return float(trajectory_cost(running, final, rollout(lambda x, v: A @ x + B @ v, x0, u), u))

    reference = minimize(cost, np.zeros(T * M), bounds=[(-0.3, 0.3)] * (T * M), method="L-BFGS-B",
                         options={"maxiter": 10000, "ftol": 1e-15, "gtol": 1e-12})
    assert result.actions.abs().max() <= 0.3 + 1e-12
    assert (result.actions.abs() > 0.3 - 1e-9).any()  # the bound is active: the test is not the unconstrained one
    assert result.cost == pytest.approx(reference.fun, rel=1e-7)
    assert np.abs(result.actions.numpy().ravel() - reference.x).max() < 1e-3


def test_box_qp_finds_the_constrained_minimiser_and_the_free_set():
    H = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    g = torch.tensor([-4.0, 1.0], dtype=torch.float64)
    d, free = box_qp(H, g, torch.tensor([-1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64))
    # KKT by hand: d_0 = 1 on its bound (gradient -4 + 2 + 0.5 d_1 < 0), d_1 = -(1 + 0.5) / 1 = -1.5 -> clamped at -1
    assert torch.allclose(d, torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert not free.any()
    d, free = box_qp(H, g, torch.tensor([-5.0, -5.0], dtype=torch.float64), torch.tensor([5.0, 5.0], dtype=torch.float64))
    assert torch.allclose(d, -torch.linalg.solve(H, g)) and free.all()


def test_ilqr_stops_in_the_mountain_cars_greedy_local_minimum():
    from sb3_ml3.envs.mountain_car import torch_step

    result = ilqr(lambda x, u: torch_step(x, u), lambda x, u, t: (x[0] - 0.5) ** 2 + 1e-3 * (u @ u),
                  torch.tensor([-0.55, 0.0]), torch.zeros(35, 1), final_cost=lambda x: (x[0] - 0.5) ** 2,
                  action_low=-0.25, action_high=0.25, max_iterations=20)
    assert all(b <= a + 1e-12 for a, b in zip(result.costs, result.costs[1:]))  # monotone
    assert result.costs[-1] < result.costs[0]
    assert result.states[-1, 0] < 0.45  # the swing-back is never found from zero actions (the paper's point)


def test_ilqr_refuses_bad_input():
    f, l_ = (lambda x, u: x + u), (lambda x, u, t: x @ x + u @ u)
    with pytest.raises(ValueError, match="x0 must have shape"):
        ilqr(f, l_, torch.zeros(2, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="initial_actions"):
        ilqr(f, l_, torch.zeros(2), torch.zeros(5))
    with pytest.raises(ValueError, match="both action_low and action_high"):
        ilqr(f, l_, torch.zeros(2), torch.zeros(5, 2), action_low=-1.0)
    with pytest.raises(ValueError, match="must not exceed"):
        ilqr(f, l_, torch.zeros(2), torch.zeros(5, 2), action_low=1.0, action_high=-1.0)
