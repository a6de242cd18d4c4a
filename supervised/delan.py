"""A Deep-Lagrangian-Networks-style inverse dynamics model: u = M_theta(q) q_dd + F_theta(q, q_d).

Following Lutter et al. (DeLaN, ICLR 2019; the paper's [15]), the inertia matrix is predicted through
its Cholesky factor: a network maps q to the n (n + 1) / 2 entries of a lower-triangular L_theta(q)
whose diagonal is made positive (softplus plus a floor), and M_theta(q) = L L^T is then symmetric
positive definite by construction. A second network predicts the remaining generalised force
F_theta(q, q_d) (Coriolis, centrifugal, gravity, friction) directly. Revolute joints enter as
(sin q, cos q), as is usual for angles.

The model's ``forward`` takes one tensor ``x = [q, q_d, q_dd]`` of shape (..., 3n) and returns the
torques (..., n): the first element of a supervised batch (:mod:`sb3_ml3.supervised.core`).
:func:`inertia_fn` gives M_theta(q) as a pure function of the parameters for the shaping task loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from sb3_ml3.functional import Params


def _mlp(width: int, hidden_sizes: Sequence[int], out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.Softplus()]
        width = hidden
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def angle_features(q: torch.Tensor) -> torch.Tensor:
    """(sin q, cos q): revolute joint angles as continuous features."""
    return torch.cat([torch.sin(q), torch.cos(q)], dim=-1)


class CholeskyInertia(nn.Module):
    """q -> M_theta(q) = L(q) L(q)^T with L lower-triangular, diag(L) = softplus(.) + min_diagonal > 0.

    :param dof: number of joints n.
    :param min_diagonal: floor on L's diagonal, so the smallest eigenvalue of M is at least its square.
    :param diagonal_offset: added before the softplus, so that M starts near ``softplus(offset)^2 I``.
    """

    def __init__(self, dof: int, hidden_sizes: Sequence[int] = (64, 64), min_diagonal: float = 1e-3,
                 diagonal_offset: float = 0.5) -> None:
        super().__init__()
        if dof < 1:
            raise ValueError(f"dof must be a positive number of joints, got {dof}.")
        self.dof = dof
        self.min_diagonal = float(min_diagonal)
        self.diagonal_offset = float(diagonal_offset)
        self.net = _mlp(2 * dof, hidden_sizes, dof * (dof + 1) // 2)
        rows, cols = torch.tril_indices(dof, dof, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def cholesky_factor(self, q: torch.Tensor) -> torch.Tensor:
        """L_theta(q) of shape (..., n, n)."""
        if q.shape[-1] != self.dof:
            raise ValueError(f"q must end in the {self.dof} joint angles, got shape {tuple(q.shape)}.")
        raw = self.net(angle_features(q))
        n = self.dof
        diagonal = nn.functional.softplus(raw[..., :n] + self.diagonal_offset) + self.min_diagonal
        lower = raw[..., n:]
        # scatter into a matrix without in-place writes (keeps torch.func transforms happy)
        flat_index = self.rows * n + self.cols
        off = torch.zeros(*raw.shape[:-1], n * n, dtype=raw.dtype, device=raw.device)
        off = off.index_add(-1, flat_index, lower)
        return off.reshape(*raw.shape[:-1], n, n) + torch.diag_embed(diagonal)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """M_theta(q) of shape (..., n, n): symmetric positive definite."""
        factor = self.cholesky_factor(q)
        return factor @ factor.transpose(-1, -2)


class InverseDynamicsNet(nn.Module):
    """u = M_theta(q) q_dd + F_theta(q, q_d) (Eq. 10) from ``x = [q, q_d, q_dd]``."""

    def __init__(self, dof: int, hidden_sizes: Sequence[int] = (64, 64), min_diagonal: float = 1e-3,
                 diagonal_offset: float = 0.5) -> None:
        super().__init__()
        self.dof = dof
        self.inertia = CholeskyInertia(dof, hidden_sizes, min_diagonal, diagonal_offset)
        self.force = _mlp(3 * dof, hidden_sizes, dof)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, q_d, q_dd) of an input of shape (..., 3n)."""
        if x.shape[-1] != 3 * self.dof:
            raise ValueError(
                f"The inverse dynamics input must be [q, q_d, q_dd] with 3 x {self.dof} = {3 * self.dof} "
                f"values per sample, got shape {tuple(x.shape)}."
            )
        n = self.dof
        return x[..., :n], x[..., n:2 * n], x[..., 2 * n:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, q_d, q_dd = self.split(x)
        inertia = self.inertia(q)
        force = self.force(torch.cat([angle_features(q), q_d], dim=-1))
        return (inertia @ q_dd.unsqueeze(-1)).squeeze(-1) + force


def inertia_fn(model: InverseDynamicsNet) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """``(theta, q) -> M_theta(q)``: the inertia head of ``model`` as a pure function of its parameters."""
    prefix = "inertia."

    def inertia(params: Params, q: torch.Tensor) -> torch.Tensor:
        own = {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}
        return functional_call(model.inertia, own, (q,))

    return inertia


__all__ = ["CholeskyInertia", "InverseDynamicsNet", "inertia_fn", "angle_features"]
