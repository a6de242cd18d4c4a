"""What model-based ML3 needs to know about each env: features, the goal's position, exact dynamics.

Model-based ML3 (paper Sec. III.B.1, Appendix A) runs on the physical state ``s`` of
PointmassGoal-v0 ``(x, y, vx, vy)`` and ReacherGoal4D-v0 ``(q1, q2, dq1, dq2)``; the goal ``g`` is a
position in the plane. An :class:`MBRLEnv` gathers, per env:

* ``features(s)``: the scaled inputs of the policy and the meta-loss (the reacher's angles enter as
  cos/sin, so that a policy or loss never sees an unbounded joint angle);
* ``position(s)``: the point whose distance to the goal is the task metric (the point mass itself,
  the reacher's fingertip by forward kinematics, links 0.1 and 0.11: equal to MuJoCo's to 1e-5);
* ``exact_step(s, a)``: the env's true dynamics as a differentiable torch function, the **upper
  reference** of the comparison: PointmassGoal's own :func:`~sb3_ml3.envs.pointmass.torch_step`;
  for the MuJoCo reacher, :class:`MujocoStep`, MuJoCo's own step whose backward pass uses centred
  finite-difference Jacobians of that step (``mjd_transitionFD`` refuses the model's RK4 integrator);
* the unroll horizon (stated in the results): PointmassGoal 50 steps (its episode, 5 s); the
  reacher 25 steps (0.5 s; the IK + PD oracle is within 0.005 of any goal after 12 steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

ENV_IDS: tuple[str, ...] = ("PointmassGoal-v0", "ReacherGoal4D-v0")
LINKS = (0.1, 0.11)  # the reacher's link and fingertip offsets (reacher.xml)


def pointmass_features(state: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """``(x, y, vx, vy, gx, gy)`` scaled to about [-1, 1] by the arena (2.5) and the top speed (2)."""
    scale = state.new_tensor([2.5, 2.5, 2.0, 2.0])
    return torch.cat([state / scale, goal / 2.5], dim=-1)


def pointmass_position(state: torch.Tensor) -> torch.Tensor:
    return state[..., 0:2]


def reacher_position(state: torch.Tensor) -> torch.Tensor:
    """The fingertip by forward kinematics of the two links: ``(..., 4) -> (..., 2)``."""
    q1, q12 = state[..., 0], state[..., 0] + state[..., 1]
    return torch.stack([LINKS[0] * torch.cos(q1) + LINKS[1] * torch.cos(q12),
                        LINKS[0] * torch.sin(q1) + LINKS[1] * torch.sin(q12)], dim=-1)


def reacher_features(state: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """``(cos q1, sin q1, cos q2, sin q2, dq1 / 10, dq2 / 10, tip / 0.2, goal / 0.2)``."""
    q1, q2 = state[..., 0:1], state[..., 1:2]
    return torch.cat([torch.cos(q1), torch.sin(q1), torch.cos(q2), torch.sin(q2), state[..., 2:4] / 10.0,
                      reacher_position(state) / 0.2, goal / 0.2], dim=-1)


def reacher_arm_frame(state: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """The reacher's state and goal in the upper arm's frame, ``(..., 7)``: ReacherGoal's ``arm_frame_features``
    (elbow cos/sin, goal radius, joint velocities, fingertip-goal vector rotated by the shoulder angle). Invariant
    to turning arm and goal together about the base, so a function of it (a learned target) is the same for every
    goal of a radius, whatever its bearing: what a loss meta-trained on some bearings needs on others."""
    from sb3_ml3.envs.reacher import arm_frame_features

    q1, q2 = state[..., 0], state[..., 1]
    tip = reacher_position(state)
    obs = torch.stack([torch.cos(q1), torch.cos(q2), torch.sin(q1), torch.sin(q2), goal[..., 0], goal[..., 1],
                       state[..., 2], state[..., 3], tip[..., 0] - goal[..., 0], tip[..., 1] - goal[..., 1]], -1)
    return arm_frame_features(obs)


#: what the meta-loss may read besides the policy's features: name -> (env id, function, width)
LOSS_FEATURES = {"arm-frame": ("ReacherGoal4D-v0", reacher_arm_frame, 7)}
#: the width final_error_features adds to the meta-loss's context
OUTCOME_DIM = 2


def final_error_features(env_id: str, states: torch.Tensor, final: torch.Tensor | None,
                         goals: torch.Tensor) -> torch.Tensor:
    """Where the trajectory ended relative to its goal, as a column pair beside each step's context, ``(B, T, 2)``.

    ``states (B, T, S)``: the steps the loss reads; ``final (B, S)``: the trajectory's last state s_H (data: it is
    the outcome of the recorded rollout, not a function of the policy being updated); ``goals (B, 2)``.
    PointmassGoal: (position(s_H) - g) / 2.5, the arena's scale. ReacherGoal4D: 10 (tip(s_H) - g) rotated into the
    upper arm's frame *of each step* (by -q1_t), the scale and frame of the arm-frame features, so the feature stays
    unchanged when arm and goal turn together about the base. ``final=None``: zeros, the context of a trajectory that
    ends on its goal (where the loss's minimiser t(c) is read as a controller).
    """
    if final is None:
        return states.new_zeros(*states.shape[:-1], OUTCOME_DIM)
    if env_id == "PointmassGoal-v0":
        error = (pointmass_position(final) - goals) / 2.5
        return error[:, None].expand(-1, states.shape[1], -1)
    if env_id == "ReacherGoal4D-v0":
        error = 10.0 * (reacher_position(final) - goals)[:, None]
        c, s = torch.cos(states[..., 0]), torch.sin(states[..., 0])
        return torch.stack([c * error[..., 0] + s * error[..., 1], -s * error[..., 0] + c * error[..., 1]], -1)
    raise ValueError(f"model-based ML3 runs on {list(ENV_IDS)}; got {env_id!r}.")


class MujocoStep(torch.autograd.Function):
    """One ReacherGoal4D step (``frame_skip`` MuJoCo steps) of a batch of arm states, differentiable.

    Forward: MuJoCo's ``mj_step`` (``frame_skip`` times) from ``(q, dq)`` with the torques as ``ctrl`` (the
    target at rest: it does not touch the arm). Backward: the vector-Jacobian product with centred
    finite-difference Jacobians of that step (:meth:`MujocoSimulator.step`).
    """

    @staticmethod
    def forward(ctx, state: torch.Tensor, action: torch.Tensor, sim: "MujocoSimulator") -> torch.Tensor:  # type: ignore[override]
        nxt, jac_s, jac_a = sim.step(state.detach().cpu().double().numpy(), action.detach().cpu().double().numpy())
        ctx.save_for_backward(torch.from_numpy(jac_s).to(state), torch.from_numpy(jac_a).to(state))
        return torch.from_numpy(nxt).to(state)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        jac_s, jac_a = ctx.saved_tensors
        return (torch.einsum("bi,bij->bj", grad_out, jac_s), torch.einsum("bi,bij->bj", grad_out, jac_a), None)


class MujocoSimulator:
    """ReacherGoal4D-v0's MuJoCo model stepped from given arm states, with the transition Jacobians."""

    def __init__(self, env_id: str = "ReacherGoal4D-v0", eps: float = 1e-5) -> None:
        import gymnasium as gym
        import mujoco

        import sb3_ml3.envs  # noqa: F401  (registers the goal envs)

        self._mujoco = mujoco
        env = gym.make(env_id).unwrapped
        self.model, self.frame_skip = env.model, int(env.frame_skip)
        self.data = mujoco.MjData(self.model)
        self.eps = float(eps)

    def _advance(self, state: np.ndarray, action: np.ndarray) -> np.ndarray:
        mj, m, d = self._mujoco, self.model, self.data
        mj.mj_resetData(m, d)
        d.qpos[:2], d.qvel[:2] = state[:2], state[2:]
        d.ctrl[:] = action
        mj.mj_step(m, d, nstep=self.frame_skip)
        return np.concatenate([d.qpos[:2], d.qvel[:2]])

    def step(self, state: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(next states (B, 4), d next / d state (B, 4, 4), d next / d action (B, 4, 2))``.

        The Jacobians are centred finite differences of the whole env step (``frame_skip`` steps of MuJoCo's
        RK4 integrator, which ``mjd_transitionFD`` does not support), step ``eps``.
        """
        out = np.empty_like(state)
        jac_s = np.empty((len(state), 4, 4))
        jac_a = np.empty((len(state), 4, action.shape[1]))
        for i in range(len(state)):
            out[i] = self._advance(state[i], action[i])
            for j in range(4):
                bump = np.zeros(4)
                bump[j] = self.eps
                jac_s[i, :, j] = (self._advance(state[i] + bump, action[i])
                                  - self._advance(state[i] - bump, action[i])) / (2 * self.eps)
            for j in range(action.shape[1]):
                bump = np.zeros(action.shape[1])
                bump[j] = self.eps
                jac_a[i, :, j] = (self._advance(state[i], action[i] + bump)
                                  - self._advance(state[i], action[i] - bump)) / (2 * self.eps)
        return out, jac_s, jac_a


@dataclass
class MBRLEnv:
    """One env of model-based ML3 (module docstring): dims, horizon, features, position, exact dynamics."""

    env_id: str
    horizon: int
    state_dim: int
    action_dim: int
    features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    feature_dim: int
    position: Callable[[torch.Tensor], torch.Tensor]
    exact_label: str
    success_threshold: float

    def exact_step_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The env's true dynamics ``(s (B, 4), a (B, 2)) -> s'`` as a differentiable torch function."""
        if self.env_id == "PointmassGoal-v0":
            from sb3_ml3.envs.pointmass import torch_step

            return torch_step
        sim = MujocoSimulator(self.env_id)

        def step(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
            shape = state.shape
            nxt = MujocoStep.apply(state.reshape(-1, shape[-1]), action.reshape(-1, action.shape[-1]), sim)
            return nxt.reshape(shape)

        return step


def with_features(env: MBRLEnv, name: str) -> MBRLEnv:
    """``env`` with its ``features`` replaced by ``name``'s: "state" (the env's own, unchanged) or a
    :data:`LOSS_FEATURES` entry of this env (what a policy class reads, e.g. the reacher's arm frame)."""
    if name == "state":
        return env
    if name not in LOSS_FEATURES or LOSS_FEATURES[name][0] != env.env_id:
        raise ValueError(f"features {name!r} are not defined for {env.env_id}: 'state' or one of "
                         f"{[k for k, v in LOSS_FEATURES.items() if v[0] == env.env_id]}.")
    return replace(env, features=LOSS_FEATURES[name][1], feature_dim=LOSS_FEATURES[name][2])


def mbrl_env(env_id: str, horizon: int | None = None) -> MBRLEnv:
    """The :class:`MBRLEnv` of ``env_id`` (PointmassGoal-v0 or ReacherGoal4D-v0); ``horizon`` overrides its default."""
    if env_id == "PointmassGoal-v0":
        env = MBRLEnv(env_id, 50, 4, 2, pointmass_features, 6, pointmass_position,
                      "exact torch dynamics (envs.pointmass.torch_step)", 0.1)
    elif env_id == "ReacherGoal4D-v0":
        env = MBRLEnv(env_id, 25, 4, 2, reacher_features, 10, reacher_position,
                      "MuJoCo's step, centred finite-difference Jacobians", 0.02)
    else:
        raise ValueError(f"model-based ML3 runs on {list(ENV_IDS)}; got {env_id!r}.")
    if horizon is not None:
        if not 1 <= int(horizon) <= 50:
            raise ValueError(f"the horizon must lie in [1, 50] (the env's episode), got {horizon}.")
        env.horizon = int(horizon)
    return env


__all__ = ["ENV_IDS", "LOSS_FEATURES", "OUTCOME_DIM", "MBRLEnv", "MujocoSimulator", "MujocoStep",
           "final_error_features", "mbrl_env", "pointmass_features", "pointmass_position", "reacher_arm_frame",
           "reacher_features", "reacher_position", "with_features"]
