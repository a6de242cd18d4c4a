"""The learned dynamics model P(s, a) -> s' of model-based ML3 and the real rollouts it learns from.

Algorithm 3 of the paper learns a forward model from samples of the real system, first from
random actions, then (Appendix A: every 100 outer iterations) from rollouts of the latest policy.

* :class:`EnsembleDynamics`: E independent MLPs, evaluated together with batched matrix products,
  each predicting the normalised state change; P(s, a) is the members' mean (the unroll that ML3
  and the task-loss baseline differentiate through), their spread a measure of the model's doubt.
* :class:`TransitionBuffer`: the (s, a, s') samples collected so far.
* :func:`rollout_real`: one episode per goal in the real Gymnasium env, all goals in lockstep, a
  policy given as a function of the observations; returns states, actions and the env's distances.
  No gradient flows through it: at meta-test (Algorithm 5) the policy is optimised from such
  rollouts with the meta-loss alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn


class EnsembleDynamics(nn.Module):
    """E MLPs ``(s, a) -> s + mu_d + sigma_d * f_e(norm(s, a))``; :meth:`forward` returns their mean.

    The inputs are standardised and the target is the standardised state change, with statistics of
    the data (:meth:`fit` sets them), so one learning rate fits both envs. Differentiable in the
    state and the action (the unroll of model-based ML3 backpropagates through it).

    Args:
        state_dim, action_dim: sizes of s and a.
        hidden_sizes: widths of each member's hidden layers (SiLU activations: a smooth model gives
            smooth gradients through long unrolls).
        n_members: E, the ensemble size.
        generator: seeds the members' initialisation.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (64, 64), n_members: int = 3,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_members < 1 or not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(f"EnsembleDynamics needs n_members >= 1 and positive hidden sizes; got {n_members}, "
                             f"{list(hidden_sizes)}.")
        self.state_dim, self.action_dim, self.n_members = int(state_dim), int(action_dim), int(n_members)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        widths = [self.state_dim + self.action_dim, *self.hidden_sizes, self.state_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(n_members, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(n_members, 1, fan_out)))
        self.register_buffer("input_mean", torch.zeros(widths[0]))
        self.register_buffer("input_std", torch.ones(widths[0]))
        self.register_buffer("delta_mean", torch.zeros(self.state_dim))
        self.register_buffer("delta_std", torch.ones(self.state_dim))

    def members(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Each member's prediction of s': ``(..., state_dim)`` inputs -> ``(E, ..., state_dim)``."""
        if state.shape[-1] != self.state_dim or action.shape[-1] != self.action_dim:
            raise ValueError(f"EnsembleDynamics expects states (..., {self.state_dim}) and actions (..., "
                             f"{self.action_dim}); got {tuple(state.shape)} and {tuple(action.shape)}.")
        if state.shape[:-1] != action.shape[:-1]:
            raise ValueError(f"states {tuple(state.shape)} and actions {tuple(action.shape)} differ in batch shape.")
        lead = state.shape[:-1]
        x = (torch.cat([state, action], -1) - self.input_mean) / self.input_std
        h = x.reshape(1, -1, x.shape[-1]).expand(self.n_members, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = nn.functional.silu(h)
        delta = self.delta_mean + self.delta_std * h
        return state.unsqueeze(0) + delta.reshape(self.n_members, *lead, self.state_dim)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """P(s, a): the members' mean prediction of the next state, shape of ``state``."""
        return self.members(state, action).mean(0)

    @torch.no_grad()
    def set_statistics(self, states: torch.Tensor, actions: torch.Tensor, next_states: torch.Tensor) -> None:
        inputs = torch.cat([states, actions], -1)
        delta = next_states - states
        self.input_mean.copy_(inputs.mean(0))
        self.input_std.copy_(inputs.std(0).clamp_min(1e-3))
        self.delta_mean.copy_(delta.mean(0))
        self.delta_std.copy_(delta.std(0).clamp_min(1e-4))

    def fit(self, buffer: "TransitionBuffer", epochs: int, batch_size: int = 256, lr: float = 1e-3,
            generator: torch.Generator | None = None) -> float:
        """Train every member on the buffer (MSE of the standardised change, Adam); returns the last epoch's loss.

        The statistics are recomputed from the whole buffer first; each member sees its own shuffle.
        """
        if len(buffer) < 2:
            raise ValueError(f"fit needs at least 2 transitions, the buffer has {len(buffer)}.")
        s, a, s_next = buffer.tensors()
        self.set_statistics(s, a, s_next)
        target = (s_next - s - self.delta_mean) / self.delta_std
        x = (torch.cat([s, a], -1) - self.input_mean) / self.input_std
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        n, last = len(s), float("nan")
        batch_size = min(batch_size, n)
        for _ in range(epochs):
            order = torch.stack([torch.randperm(n, generator=generator) for _ in range(self.n_members)])
            total = 0.0
            for start in range(0, n - batch_size + 1, batch_size):
                idx = order[:, start:start + batch_size]
                h = x[idx]
                for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                    h = torch.baddbmm(b, h, w)
                    if i < len(self.weights) - 1:
                        h = nn.functional.silu(h)
                loss = ((h - target[idx]) ** 2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            last = total / max(1, n // batch_size)
        return last

    @torch.no_grad()
    def one_step_error(self, buffer: "TransitionBuffer") -> float:
        """Root mean squared error of P's one-step prediction of s' on the buffer (in the state's units)."""
        s, a, s_next = buffer.tensors()
        return float(((self(s, a) - s_next) ** 2).mean().sqrt())


class TransitionBuffer:
    """The real transitions (s, a, s') collected so far, as float32 tensors."""

    def __init__(self, state_dim: int, action_dim: int) -> None:
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self._chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add_rollouts(self, states: np.ndarray, actions: np.ndarray) -> None:
        """Add episodes: states ``(B, T + 1, state_dim)`` and the actions between them ``(B, T, action_dim)``."""
        states, actions = np.asarray(states, dtype=np.float32), np.asarray(actions, dtype=np.float32)
        if states.ndim != 3 or actions.ndim != 3 or states.shape[1] != actions.shape[1] + 1 \
                or states.shape[-1] != self.state_dim or actions.shape[-1] != self.action_dim:
            raise ValueError(f"add_rollouts expects states (B, T + 1, {self.state_dim}) and actions (B, T, "
                             f"{self.action_dim}); got {states.shape} and {actions.shape}.")
        s = torch.from_numpy(states[:, :-1].reshape(-1, self.state_dim))
        s_next = torch.from_numpy(states[:, 1:].reshape(-1, self.state_dim))
        self._chunks.append((s, torch.from_numpy(actions.reshape(-1, self.action_dim)), s_next))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(torch.cat([c[i] for c in self._chunks]) for i in range(3))  # type: ignore[return-value]

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self._chunks)


@dataclass
class RealRollout:
    """One episode per goal in the real env: states (B, T + 1, 4), actions (B, T, 2), distances (B, T)."""

    states: np.ndarray
    actions: np.ndarray
    distances: np.ndarray

    @property
    def final_distance(self) -> np.ndarray:
        """Each goal's distance to the goal after the last step (the env's ``info["distance"]``)."""
        return self.distances[:, -1]


class RealEnvs:
    """One Gymnasium env per goal, stepped in lockstep (kept open: MuJoCo envs are slow to build)."""

    def __init__(self, env_id: str, goals: np.ndarray) -> None:
        import sb3_ml3.envs  # noqa: F401  (registers the goal envs)

        self.env_id = env_id
        self.goals = np.asarray(goals, dtype=np.float64)
        self.envs = [gym.make(env_id, goal=goal) for goal in self.goals]
        unwrapped = self.envs[0].unwrapped
        self.state_slice = getattr(unwrapped, "state_slice", slice(0, 4))

    def rollout(self, act: Callable[[np.ndarray], np.ndarray], horizon: int, seed: int) -> RealRollout:
        """``horizon`` steps from each env's reset with seed ``seed + i``; ``act`` maps obs (B, 6) to actions."""
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)])
        states, actions, distances = [obs[:, self.state_slice]], [], []
        for _ in range(horizon):
            action = np.clip(np.asarray(act(obs), dtype=np.float32), -1.0, 1.0)
            steps = [env.step(a) for env, a in zip(self.envs, action)]
            obs = np.stack([s[0] for s in steps])
            states.append(obs[:, self.state_slice])
            actions.append(action)
            distances.append([s[4]["distance"] for s in steps])
        return RealRollout(np.stack(states, 1), np.stack(actions, 1), np.asarray(distances).T)

    def start_states(self, seed: int) -> np.ndarray:
        """The reset states (B, 4) that :meth:`rollout` with ``seed`` starts from."""
        return np.stack([env.reset(seed=seed + i)[0][self.state_slice] for i, env in enumerate(self.envs)])

    def close(self) -> None:
        for env in self.envs:
            env.close()


def random_action_rollouts(env_id: str, goals: np.ndarray, horizon: int, seed: int, hold: int = 1,
                           amplitude_min: float = 1.0) -> RealRollout:
    """Uniform random actions, each held for ``hold`` steps (1: a fresh draw every step, the default; longer holds
    drive the point mass into the walls, whose velocity resets the model then spends its capacity on).

    Each episode's actions are scaled by its own amplitude u ~ U(``amplitude_min``, 1) (1: full-range torques, the
    default). Full-range torques spin the reacher's elbow to ~25 rad/s, far from where policies go; gentler
    episodes cover the slow states near a goal that a model must predict well there.
    """
    if not 0.0 <= amplitude_min <= 1.0:
        raise ValueError(f"amplitude_min must lie in [0, 1], got {amplitude_min}.")
    rng = np.random.default_rng(seed)
    envs = RealEnvs(env_id, goals)
    n_blocks = -(-horizon // hold)
    action_dim = envs.envs[0].action_space.shape[0]
    table = rng.uniform(-1.0, 1.0, size=(len(goals), n_blocks, action_dim)).repeat(hold, axis=1)
    if amplitude_min < 1.0:
        table = table * rng.uniform(amplitude_min, 1.0, size=(len(goals), 1, 1))
    counter = iter(range(horizon))

    def act(obs: np.ndarray) -> np.ndarray:
        return table[:, next(counter)]

    try:
        return envs.rollout(act, horizon, seed)
    finally:
        envs.close()


__all__ = ["EnsembleDynamics", "TransitionBuffer", "RealRollout", "RealEnvs", "random_action_rollouts"]
