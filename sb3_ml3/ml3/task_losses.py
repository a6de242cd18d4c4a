"""The task losses L_T that ML3's outer step differentiates (Eq. 5-8; Sec. IV.C.4), one class each.

A task loss is a pure function of the actor parameters and a rollout's data, ``loss(params, data)``,
so that :func:`sb3_ml3.functional.meta_gradient` can differentiate it through the inner update. Each
class owns what it needs beyond the policy: :class:`QValueTaskLoss` its action-value network and
optimizer, :class:`ImitationTaskLoss` the expert; :class:`TaskCritic` is the value function of a
``task_reward`` (an info key) that weighs the REINFORCE and Q-value losses.

They read their settings (entropy coefficient, clip range, ...) from the ML3 model they belong to,
so that one model has one source of truth for them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import create_mlp
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from sb3_ml3.functional import Adam, Params
from sb3_ml3.ml3.policies import gaussian_entropy, gaussian_log_prob

if TYPE_CHECKING:
    from sb3_ml3.ml3.ml3 import ML3

#: the task objectives of ``ML3(task_objective=...)``
TASK_OBJECTIVES = ("reinforce", "q_value", "imitation")


def clip_actions(actions: torch.Tensor, action_space: spaces.Box) -> torch.Tensor:
    """Actions clipped to the action space's bounds, as the env receives them (differentiable inside)."""
    low = torch.as_tensor(action_space.low, device=actions.device, dtype=actions.dtype)
    high = torch.as_tensor(action_space.high, device=actions.device, dtype=actions.dtype)
    return torch.maximum(torch.minimum(actions, high), low)


def fit_regression(predict: Any, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor,
                   optimizer: torch.optim.Optimizer, epochs: int, batch_size: int) -> float:
    """Mean squared error regression of ``predict(*inputs)`` on ``targets`` in shuffled minibatches; the mean loss.

    An Adam ``optimizer`` steps through :meth:`sb3_ml3.functional.Adam.apply_` (torch's fused kernel, the
    same steps as ``optimizer.step()``), any other through ``step()``.
    """
    losses = []
    size = targets.shape[0]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    lean = Adam() if type(optimizer) is torch.optim.Adam else None
    for _ in range(epochs):
        order = torch.as_tensor(np.random.permutation(size), device=targets.device)
        for start in range(0, size, batch_size):
            index = order[start:start + batch_size]
            loss = F.mse_loss(targets[index], predict(*(x[index] for x in inputs)).flatten())
            if lean is not None:  # parameters the loss does not reach keep still, as step() leaves them
                pairs = [(p, g) for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))
                         if g is not None]
                lean.apply_(optimizer, [p for p, _ in pairs], [g for _, g in pairs])
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            losses.append(loss.detach())
    return float(torch.stack(losses).mean()) if losses else float("nan")


class TaskLoss:
    """Base class: L_T(params, data) with an entropy bonus, and the per-rollout work it needs."""

    name = "base"

    def __init__(self, model: "ML3") -> None:
        self.model = model

    def prepare(self, data: dict[str, torch.Tensor]) -> None:
        """Add what this loss reads to a rollout's ``data`` (called once per rollout, at meta-train)."""

    def loss(self, params: Params | None, data: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, data: dict[str, torch.Tensor], targets: torch.Tensor | None) -> dict[str, float]:
        """Train this loss's own networks on the rollout; the figures to log."""
        return {}

    def with_entropy_bonus(self, task_loss: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """L_T - c_H * mean entropy of the Gaussian policy (``task_ent_coef``)."""
        if self.model.task_ent_coef:
            return task_loss - self.model.task_ent_coef * gaussian_entropy(std).mean()
        return task_loss


class ReinforceTaskLoss(TaskLoss):
    """L_T = -mean[w log pi_theta(a|s)] (Eq. 7-8), or PPO's clipped surrogate of w with ``task_clip_range``.

    w is ``data["task_loss_weights"]`` when present (``task_reward``), else ``data["task_weights"]`` (the
    env reward's advantage). The clipped form -mean[min(r w, clip(r, 1 - eps, 1 + eps) w)], r = pi / pi_old,
    has REINFORCE's gradient at the behaviour policy and lets several outer steps reuse a rollout.
    """

    name = "reinforce"

    def loss(self, params: Params | None, data: dict[str, torch.Tensor]) -> torch.Tensor:
        mean, std = self.model.policy.actor_mean_std(params, data["observations"])
        weights = data.get("task_loss_weights", data["task_weights"])
        log_prob = gaussian_log_prob(mean, std, data["actions"])
        eps = self.model.task_clip_range
        if eps is None:
            loss = -(weights * log_prob).mean()  # Eq. 7-8
        else:
            ratio = torch.exp(log_prob - data["old_log_prob"])
            loss = -torch.min(ratio * weights, torch.clamp(ratio, 1.0 - eps, 1.0 + eps) * weights).mean()
        return self.with_entropy_bonus(loss, std)


class QValueTaskLoss(TaskLoss):
    """L_T = -mean_s Q_task(s, mu_theta(s)): a pathwise task loss through a learned action-value.

    Q_task (an MLP of 256, 256 with ReLU of the state and the clipped action, like TD3's) is fitted to the
    task critic's lambda-returns after every rollout; its weights are constants in L_T, so the outer step
    differentiates only through mu_theta.
    """

    name = "q_value"

    def __init__(self, model: "ML3") -> None:
        super().__init__(model)
        n_obs, n_act = int(model.observation_space.shape[0]), int(model.action_space.shape[0])
        self.q_net = nn.Sequential(*create_mlp(n_obs + n_act, 1, [256, 256], nn.ReLU)).to(model.device)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=model.vf_learning_rate)

    def q_value(self, observations: torch.Tensor, actions: torch.Tensor, constant: bool = False) -> torch.Tensor:
        """Q_task(s, clip(a)), flat; ``constant``: its weights enter as constants (no graph to them)."""
        inputs = torch.cat([observations, clip_actions(actions, self.model.action_space)], dim=-1)
        if constant:
            weights = {name: p.detach() for name, p in self.q_net.named_parameters()}
            return functional_call(self.q_net, weights, (inputs,)).squeeze(-1)
        return self.q_net(inputs).squeeze(-1)

    def loss(self, params: Params | None, data: dict[str, torch.Tensor]) -> torch.Tensor:
        mean, std = self.model.policy.actor_mean_std(params, data["observations"])
        return self.with_entropy_bonus(-self.q_value(data["observations"], mean, constant=True).mean(), std)

    def fit(self, data: dict[str, torch.Tensor], targets: torch.Tensor | None) -> dict[str, float]:
        assert targets is not None, "Q_task learns the task critic's lambda-returns"
        model = self.model
        loss = fit_regression(self.q_value, (data["observations"], data["actions"]), targets, self.optimizer,
                              model.task_critic_epochs or model.n_epochs, model.batch_size)
        return {"task_q_loss": loss}


class ImitationTaskLoss(TaskLoss):
    """L_T = mean_s ||clip(mu_theta(s)) - a_E(s)||^2: behavioural cloning of an expert (Sec. IV.C.4)."""

    name = "imitation"

    def __init__(self, model: "ML3", expert: BaseAlgorithm | BasePolicy | str | os.PathLike | None) -> None:
        super().__init__(model)
        self.expert: BasePolicy | None = None if expert is None else self.load_expert(expert)

    def load_expert(self, expert: BaseAlgorithm | BasePolicy | str | os.PathLike) -> BasePolicy:
        """The expert's policy, checked against the env's spaces, on the model's device, frozen."""
        model = self.model
        if isinstance(expert, (str, os.PathLike)):
            if not os.path.exists(expert) and not os.path.exists(f"{expert}.zip"):
                raise FileNotFoundError(f"expert {str(expert)!r}: no such file; pass a saved SB3 PPO model.")
            expert = PPO.load(expert, device=model.device)
        policy = expert.policy if isinstance(expert, BaseAlgorithm) else expert
        if not isinstance(policy, BasePolicy):
            raise TypeError(f"expert must be an SB3 model, an SB3 policy or a saved PPO path, got {type(expert).__name__}.")
        if policy.observation_space.shape != model.observation_space.shape or policy.action_space.shape != model.action_space.shape:
            raise ValueError(
                f"the expert's spaces (observations {policy.observation_space.shape}, actions "
                f"{policy.action_space.shape}) do not match this env's ({model.observation_space.shape}, "
                f"{model.action_space.shape}): train the expert on the same env."
            )
        policy = policy.to(model.device)
        policy.set_training_mode(False)
        return policy.requires_grad_(False)

    def expert_actions(self, observations: torch.Tensor) -> torch.Tensor:
        """a_E(s): the expert's deterministic actions, clipped to the action bounds."""
        assert self.expert is not None
        with torch.no_grad():
            actions = self.expert._predict(observations, deterministic=True).to(observations.dtype)
        return clip_actions(actions.reshape(observations.shape[0], -1), self.model.action_space)

    def prepare(self, data: dict[str, torch.Tensor]) -> None:
        if self.expert is None:
            raise ValueError(
                "task_objective='imitation' meta-trains against an expert, and this model has none (an expert "
                "object is not saved with the model): pass it again, e.g. ML3.load(path, env, expert=expert)."
            )
        data["expert_actions"] = self.expert_actions(data["observations"])

    def loss(self, params: Params | None, data: dict[str, torch.Tensor]) -> torch.Tensor:
        mean, std = self.model.policy.actor_mean_std(params, data["observations"])
        loss = ((clip_actions(mean, self.model.action_space) - data["expert_actions"]) ** 2).sum(dim=-1).mean()
        return self.with_entropy_bonus(loss, std)


class TaskCritic:
    """V_task(s) of a ``task_reward``: an MLP like SB3's default value net (64, 64, tanh), with its Adam."""

    def __init__(self, model: "ML3") -> None:
        space = model.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"task_critic needs a flat Box observation space, got {space}.")
        self.model = model
        self.net = nn.Sequential(*create_mlp(int(space.shape[0]), 1, [64, 64], nn.Tanh)).to(model.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=model.vf_learning_rate)

    def values(self, observations: np.ndarray) -> np.ndarray:
        """V_task of an array of observations (any leading shape), as float64."""
        with torch.no_grad():
            obs = torch.as_tensor(observations, device=self.model.device, dtype=torch.float32)
            return self.net(obs).squeeze(-1).double().cpu().numpy()

    def fit(self, data: dict[str, torch.Tensor], targets: torch.Tensor) -> float:
        model = self.model
        return fit_regression(self.net, (data["observations"],), targets, self.optimizer,
                              model.task_critic_epochs or model.n_epochs, model.batch_size)


def make_task_loss(model: "ML3", expert: Any = None) -> TaskLoss:
    """The task loss of ``model.task_objective``."""
    if model.task_objective == "q_value":
        return QValueTaskLoss(model)
    if model.task_objective == "imitation":
        return ImitationTaskLoss(model, expert)
    return ReinforceTaskLoss(model)


__all__ = ["TASK_OBJECTIVES", "ImitationTaskLoss", "QValueTaskLoss", "ReinforceTaskLoss", "TaskCritic", "TaskLoss",
           "clip_actions", "fit_regression", "make_task_loss"]
