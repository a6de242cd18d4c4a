"""ML3Policy: SB3's ActorCriticPolicy with a pure (params, obs) -> (mean, std) for torch.func.

The ML3 inner step differentiates the learned loss M_phi(s, a, mu_theta(s), sigma_theta, g) with
respect to the actor's parameters theta, and the outer step differentiates through that update.
Both need the Gaussian's mean and standard deviation as a *function of explicit parameters*, which
:meth:`ML3Policy.actor_mean_std` provides through :func:`torch.func.functional_call`.

It deliberately does not go through SB3's distribution object: a policy reuses one distribution
instance, whose state would be overwritten by nested evaluations.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import nn
from torch.func import functional_call

from sb3_ml3.functional import Params

#: Prefixes of the parameters the learned loss trains (the actor); everything else is the critic's.
ACTOR_PREFIXES = ("features_extractor.", "mlp_extractor.policy_net.", "action_net.", "log_std")


class _ActorView(nn.Module):
    """The actor half of an ActorCriticPolicy as its own module, sharing the policy's submodules.

    Its parameter names equal the policy's (``mlp_extractor.policy_net.0.weight``, ``log_std``, ...),
    so a dictionary of actor parameters applies to both. It is kept out of the policy's children so
    that the policy's ``state_dict`` is unchanged.
    """

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.features_extractor = policy.pi_features_extractor
        self.mlp_extractor = policy.mlp_extractor
        self.action_net = policy.action_net
        self.log_std = policy.log_std
        self._observation_space = policy.observation_space
        self._normalize_images = policy.normalize_images
        self._log_std_min = policy.log_std_min
        self._log_std_max = policy.log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self._observation_space, spaces.Box) and obs.is_floating_point():
            features_in = obs  # preprocess_obs would only cast to float32; keep float64 for exact checks
        else:
            features_in = preprocess_obs(obs, self._observation_space, self._normalize_images)
        features = self.features_extractor(features_in)
        mean = self.action_net(self.mlp_extractor.forward_actor(features))
        std = torch.exp(self.log_std.clamp(self._log_std_min, self._log_std_max)).expand_as(mean)
        return mean, std


class ML3Policy(ActorCriticPolicy):
    """Actor-critic policy for ML3 (``"MlpPolicy"``): a diagonal Gaussian over a ``Box`` action space.

    Accepts every argument of :class:`~stable_baselines3.common.policies.ActorCriticPolicy` except
    gSDE, which has no fixed (mean, std) per state to feed the meta-loss, plus ``log_std_min`` and
    ``log_std_max``: bounds on log sigma in sampling and in the meta-loss inputs. A learned loss can drive
    sigma to zero (or infinity) within a few updates; the bounds keep exploration and log-probabilities finite.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Any,
                 *args: Any, log_std_min: float = -5.0, log_std_max: float = 2.0, **kwargs: Any) -> None:
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        if not isinstance(action_space, spaces.Box):
            raise ValueError(
                f"ML3 needs a continuous Box action space (its meta-loss reads the Gaussian's mean and std), "
                f"got {action_space}. For discrete actions use PPO or A2C."
            )
        if kwargs.get("use_sde"):
            raise ValueError("ML3 does not support gSDE (use_sde=True): its meta-loss needs a per-state mean and std.")
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)
        if not isinstance(self.action_dist, DiagGaussianDistribution):
            raise ValueError(f"ML3Policy needs a diagonal Gaussian action distribution, got {type(self.action_dist)}.")
        object.__setattr__(self, "_actor_view", _ActorView(self))
        #: how a non-finite observation's error names the env (ML3 sets its id)
        self.env_name = "the env"

    def _check_finite(self, obs: torch.Tensor) -> None:
        """Refuse a NaN or inf observation with a message naming the env, before it reaches the networks
        (``torch.distributions`` would otherwise fail with a constraint message about ``loc``)."""
        if isinstance(obs, torch.Tensor) and obs.is_floating_point() and not bool(torch.isfinite(obs).all()):
            raise ValueError(
                f"{self.env_name} returned a non-finite observation (NaN or inf): "
                f"{obs[~torch.isfinite(obs).all(dim=-1)][:1].tolist()}. Fix the env (or the wrapper that makes "
                "it) before training; ML3 never feeds such values to its policy or meta-loss."
            )

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check_finite(obs)
        return super().forward(obs, deterministic)

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        self._check_finite(observation)
        return super()._predict(observation, deterministic)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> DiagGaussianDistribution:
        mean_actions = self.action_net(latent_pi)
        return self.action_dist.proba_distribution(mean_actions, self.log_std.clamp(self.log_std_min, self.log_std_max))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["log_std_min"] = self.log_std_min
        data["log_std_max"] = self.log_std_max
        return data

    # ------------------------------------------------------------------ parameters
    def actor_parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters() if name.startswith(ACTOR_PREFIXES)]

    def actor_parameters(self) -> Params:
        """The live actor parameters theta (``nn.Parameter`` objects), keyed by name."""
        named = dict(self.named_parameters())
        return {name: named[name] for name in self.actor_parameter_names()}

    def critic_parameters(self) -> list[nn.Parameter]:
        actor = set(self.actor_parameter_names())
        return [p for name, p in self.named_parameters() if name not in actor]

    @torch.no_grad()
    def load_actor_parameters(self, params: Params) -> None:
        """Write theta (e.g. the result of an inner update) into the policy."""
        live = self.actor_parameters()
        if set(params) != set(live):
            raise KeyError(f"Actor parameters differ: expected {sorted(live)}, got {sorted(params)}.")
        for name, value in params.items():
            live[name].copy_(value)

    @torch.no_grad()
    def reset_actor(self) -> None:
        """Re-initialise the actor as SB3 initialises a new policy (Algorithm 4, line 4: theta_0)."""
        gain = np.sqrt(2) if self.ortho_init else None
        for module in (self.pi_features_extractor, self.mlp_extractor.policy_net):
            if gain is None:
                module.apply(_reset_module)
            else:
                module.apply(partial(self.init_weights, gain=gain))
        self.action_net.apply(partial(self.init_weights, gain=0.01) if self.ortho_init else _reset_module)
        self.log_std.fill_(self.log_std_init)

    # ------------------------------------------------------------------ the pure actor
    def actor_mean_std(self, params: Params | None, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu_theta(s) and sigma_theta for observations ``obs`` under actor parameters ``params``.

        ``params=None`` uses the policy's own parameters. Pure in ``params``: safe under ``grad``/``vmap``.
        """
        if params is None:
            return self._actor_view(obs)
        return functional_call(self._actor_view, params, (obs,))

    def actor_log_prob(self, params: Params | None, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi_theta(a|s) of the diagonal Gaussian, summed over action dimensions."""
        mean, std = self.actor_mean_std(params, obs)
        return gaussian_log_prob(mean, std, actions)


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(mean: torch.Tensor, std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a; mean, std^2), summed over the last dimension.

    Written out rather than through ``torch.distributions``, whose argument checks raise on NaN: a
    diverged inner update must reach the outer step's finiteness check, which skips and counts it.
    """
    return (-0.5 * ((actions - mean) / std) ** 2 - torch.log(std) - _LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, summed over the last dimension."""
    return (0.5 + _LOG_SQRT_2PI + torch.log(std)).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dimension."""
    return (torch.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5).sum(-1)


def _reset_module(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


MlpPolicy = ML3Policy
