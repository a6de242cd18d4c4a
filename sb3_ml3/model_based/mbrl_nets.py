"""The networks of model-based ML3: a batch of policies pi_theta(s, g) and the meta-loss M_phi(tau, g) with its rate.

* :class:`PolicyBatch`: B deterministic MLP policies ``a = tanh(f_theta(features(s, g)))`` held as one
  parameter dictionary with a leading policy dimension (one policy per goal, optimised independently
  and side by side with batched matrix products; a pure function of the parameters for ``torch.func``).
* :class:`LossAndRate`: the meta-loss of the paper's MBRL experiment, which reads the state-action
  trajectory and the goal and outputs **both the loss and the learning rate** (Sec. IV.A.2):

  - the loss ``M_phi(tau, g) = mean_t sum_j w_j(c_t) (a_t,j - t_j(c_t))^2`` with the context
    ``c_t = features(s_t, g)``: a :class:`~sb3_ml3.meta_loss.MetaLoss` in quadratic form (the learned
    target ``t`` and weight ``w > 0`` of each action component; bounded below, and it needs no model);
  - the rate ``alpha(tau, g) = alpha_max * sigmoid(b + mean_t h_phi(c_t, a_t))``: positive and bounded by
    construction, starting at ``alpha_init`` (last layer zero, bias ``logit(alpha_init / alpha_max)``).

  With ``time_steps`` H, each step's term is also weighed by a learned positive weight of its time index,
  ``M = mean_t omega_t m_t`` with ``omega_t = exp(l_t)``, starting all 1 (the plain mean) or, with
  ``time_weight_init="late"``, on a ramp from 0.1 at the first step to 1.9 at the last (mean 1). The task loss reads
  the final state only, so a loss may learn to pull hardest where the last states are decided; omega does not move
  the quadratic form's minimiser (a positive factor per step).

  ``loss_form="free"``: M is instead an unbounded ELU MLP of (c_t, a_t), averaged over t (the authors' own
  model-based loss form: a network of the detached states, the action and the goal, with no target structure).

  The quadratic form's minimiser over the action is its target t(c) (:meth:`LossAndRate.minimiser`): the controller
  many inner steps lead to, which can be rolled out and scored on its own.

  ``alpha`` reads the **recorded** actions of tau, so it is a function of (tau, g, phi) but not of theta:
  the inner step theta' = theta - alpha grad_theta M_phi is exactly SGD with rate 1 on ``alpha * M_phi``.

Saved as one zip of a JSON spec and the weights (:meth:`LossAndRate.save`, never a pickle of objects).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from typing import Any

import torch
from torch import nn

from sb3_ml3.atomic import atomic_path
from sb3_ml3.functional import Params
from sb3_ml3.meta_loss import MetaLoss, MetaLossSpecError

FORMAT = "sb3-ml3 mbrl loss-and-rate 1"
#: forms of M_phi: the quadratic target form (the default) or the authors' free MLP
LOSS_FORMS = ("quadratic", "free")
#: where the learned per-step weights omega_t start (LossAndRate's time_weight_init)
TIME_WEIGHT_INITS = ("uniform", "late")


class PolicyBatch:
    """B MLP policies on ``features (B, ..., in)`` -> actions ``(B, ..., out)`` in [-1, 1] (tanh)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...] = (32, 32)) -> None:
        self.widths = [int(in_dim), *[int(h) for h in hidden_sizes], int(out_dim)]

    def init(self, n: int, generator: torch.Generator | None = None) -> Params:
        """``n`` fresh policies (PyTorch's default Linear initialisation, last layer scaled by 0.1)."""
        params: Params = {}
        for i, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            bound = 1.0 / math.sqrt(fan_in) * (0.1 if i == len(self.widths) - 2 else 1.0)
            params[f"w{i}"] = (torch.rand(n, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            params[f"b{i}"] = (torch.rand(n, 1, fan_out, generator=generator) * 2 - 1) * bound
        return params

    def __call__(self, params: Params, features: torch.Tensor, pre_tanh: bool = False) -> torch.Tensor:
        """Actions of each policy on its own features: ``features`` has the policies' leading dimension.

        ``pre_tanh``: the output layer's value u before the squashing tanh (the action is tanh(u)); a loss on u
        keeps its gradient where the action saturates at +-1 (a loss on tanh(u) loses it there: stuck policies).
        """
        n = params["w0"].shape[0]
        if features.shape[0] != n or features.shape[-1] != self.widths[0]:
            raise ValueError(f"PolicyBatch expects features ({n}, ..., {self.widths[0]}); got {tuple(features.shape)}.")
        lead = features.shape[1:-1]
        h = features.reshape(n, -1, self.widths[0])
        layers = len(self.widths) - 1
        for i in range(layers):
            h = torch.baddbmm(params[f"b{i}"], h, params[f"w{i}"])
            if i < layers - 1 or not pre_tanh:
                h = torch.tanh(h)  # hidden tanh, and tanh squashes the output into the action box
        return h.reshape(n, *lead, self.widths[-1])


class LossAndRate(nn.Module):
    """M_phi(tau, g) and alpha(tau, g) of model-based ML3 (module docstring).

    Args:
        feature_dim: width of ``features(s, g)`` (the env's, :mod:`.mbrl_envs`).
        action_dim: width of the action.
        hidden_sizes: the loss net's and the rate net's hidden widths.
        alpha_max, alpha_init: the bound of the learned rate and its value before meta-training.
        relative_target: the loss's target is the recorded action plus a learned change (module docstring);
            that change's head starts at a tenth of the Xavier scale, so the first steps are small.
        loss_form: ``"quadratic"`` (the target form above) or ``"free"`` (an ELU MLP of the context and action).
        target_bound: the quadratic form's target becomes b tanh(.) (b < 1: inside the tanh policy's action box, where
            a pulled action keeps its gradient); ``None``: unbounded.
        time_steps: the trajectories' length H, to learn one weight per time index (module docstring); ``None``:
            every step counts the same.
        time_weight_init: where those weights start, ``"uniform"`` (all 1) or ``"late"`` (a ramp, module docstring).
        metadata: JSON-able facts saved with the weights (env id, horizon, ...).
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden_sizes: tuple[int, ...] = (64, 64),
                 alpha_max: float = 10.0, alpha_init: float = 1.0, metadata: dict[str, Any] | None = None,
                 generator: torch.Generator | None = None, relative_target: bool = False,
                 loss_form: str = "quadratic", target_bound: float | None = None,
                 time_steps: int | None = None, time_weight_init: str = "uniform") -> None:
        super().__init__()
        if time_steps is not None and (isinstance(time_steps, bool) or int(time_steps) != time_steps or time_steps < 1):
            raise ValueError(f"time_steps must be a positive trajectory length or None, got {time_steps!r}.")
        if time_weight_init not in TIME_WEIGHT_INITS:
            raise ValueError(f"time_weight_init must be one of {list(TIME_WEIGHT_INITS)}, got {time_weight_init!r}.")
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {list(LOSS_FORMS)}, got {loss_form!r}.")
        if loss_form == "free" and target_bound is not None:
            raise ValueError("target_bound bounds the quadratic form's target; the free form has none.")
        if loss_form == "free" and relative_target:
            raise ValueError("relative_target shapes the quadratic form's target; the free form has none.")
        self.loss_form = loss_form
        if not 0.0 < alpha_init < alpha_max or not math.isfinite(alpha_max):
            raise ValueError(f"need 0 < alpha_init < alpha_max < inf; got alpha_init={alpha_init}, alpha_max={alpha_max}.")
        self.feature_dim, self.action_dim = int(feature_dim), int(action_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.alpha_max, self.alpha_init = float(alpha_max), float(alpha_init)
        self.metadata = dict(metadata or {})
        self.relative_target = bool(relative_target)
        spec = f"context:{feature_dim}, action:{action_dim}" + (f", recorded:{action_dim}" if relative_target else "")
        if loss_form == "free":
            self.loss_net = MetaLoss(spec, hidden_sizes=self.hidden_sizes, activation="elu")
        else:
            self.loss_net = MetaLoss(spec, hidden_sizes=self.hidden_sizes, activation="tanh", quadratic=["action"],
                                     quadratic_reference={"action": "recorded"} if relative_target else None,
                                     target_bound=target_bound)
        self.loss_net.reset_parameters(generator)
        if relative_target:
            with torch.no_grad():
                self.loss_net.net[-1].weight[:action_dim] *= 0.1  # the change d starts small
        layers: list[nn.Module] = []
        width = self.feature_dim + self.action_dim
        for hidden in self.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        self.rate_net = nn.Sequential(*layers, nn.Linear(width, 1))
        with torch.no_grad():
            for module in self.rate_net:
                if isinstance(module, nn.Linear):
                    bound = math.sqrt(6.0 / (module.in_features + module.out_features))
                    module.weight.uniform_(-bound, bound, generator=generator)
                    module.bias.zero_()
            last = self.rate_net[-1]
            last.weight.zero_()
            last.bias.fill_(math.log(self.alpha_init / (self.alpha_max - self.alpha_init)))  # logit
        self.time_steps = None if time_steps is None else int(time_steps)
        if self.time_steps is not None:  # omega_t = exp(l_t)
            start = (torch.linspace(0.1, 1.9, self.time_steps) if time_weight_init == "late" and self.time_steps > 1
                     else torch.ones(self.time_steps))
            self.log_time_weight = nn.Parameter(start.log())

    def forward(self, context: torch.Tensor, action: torch.Tensor | None = None,
                recorded_action: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(M per trajectory (B,), alpha (B,))`` from contexts ``(B, T, F)``, the policy's actions ``(B, T, A)``
        (differentiable in theta) and the trajectory's recorded actions (the same values, no gradient to theta).

        With ``action=None``: :meth:`minimiser` of the contexts (so ``functional_call`` reaches it with phi)."""
        if action is None:
            return self.minimiser(context)
        if recorded_action is None:
            raise ValueError("LossAndRate needs the recorded actions beside the policy's actions.")
        if context.shape[-1] != self.feature_dim or action.shape[-1] != self.action_dim or context.dim() != 3:
            raise ValueError(f"LossAndRate expects contexts (B, T, {self.feature_dim}) and actions (B, T, "
                             f"{self.action_dim}); got {tuple(context.shape)} and {tuple(action.shape)}.")
        fields = {"context": context, "action": action}
        if self.relative_target:
            fields["recorded"] = recorded_action.detach()
        per_step = self.loss_net(fields)
        if self.time_steps is not None:
            if per_step.shape[-1] != self.time_steps:
                raise ValueError(f"this loss weighs trajectories of {self.time_steps} steps (time_steps); got "
                                 f"{per_step.shape[-1]}. Use the horizon it was meta-trained with.")
            per_step = per_step * self.log_time_weight.exp()
        loss = per_step.mean(-1)
        logits = self.rate_net(torch.cat([context, recorded_action.detach()], -1)).squeeze(-1).mean(-1)
        return loss, self.alpha_max * torch.sigmoid(logits)

    @property
    def has_minimiser(self) -> bool:
        """Whether :meth:`minimiser` exists: the quadratic form with an absolute target."""
        return self.loss_form == "quadratic" and not self.relative_target

    def minimiser(self, context: torch.Tensor) -> torch.Tensor:
        """The action that minimises M at each context, ``(..., A)``: the quadratic form's target t(c).

        M = sum_j w_j(c) (a_j - t_j(c))^2 with w > 0 is smallest at a = t(c), so t is the policy a policy trained on
        M alone tends to (the limit of many inner steps): a controller that can be unrolled and scored on its own.
        Only the quadratic form with an absolute target has one (the free form's minimiser has no closed form, and a
        relative target moves with the recorded action).
        """
        if not self.has_minimiser:
            raise ValueError("minimiser needs the quadratic loss form with an absolute target (loss_form='quadratic', "
                             "relative_target=False).")
        if context.shape[-1] != self.feature_dim:
            raise ValueError(f"minimiser expects contexts (..., {self.feature_dim}); got {tuple(context.shape)}.")
        placeholder = context.new_zeros(*context.shape[:-1], self.action_dim)
        return self.loss_net.quadratic_form({"context": context, "action": placeholder})[1]

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "feature_dim": self.feature_dim, "action_dim": self.action_dim,
                "hidden_sizes": list(self.hidden_sizes), "alpha_max": self.alpha_max, "alpha_init": self.alpha_init,
                "relative_target": self.relative_target, "loss_form": self.loss_form, "time_steps": self.time_steps,
                "loss_net": self.loss_net.config(), "metadata": self.metadata}

    def save(self, path: str | os.PathLike) -> None:
        """One zip: ``spec.json`` (the architecture and metadata) and ``weights.pt`` (a tensor state dict), atomic."""
        spec = json.dumps(self.config(), indent=2, sort_keys=True, allow_nan=False)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, buffer)
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("spec.json", spec)
            archive.writestr("weights.pt", buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LossAndRate":
        """Read what :meth:`save` wrote (tensors only: ``torch.load(weights_only=True)``)."""
        path = os.fspath(path)
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("spec.json").decode("utf-8"))
                state = torch.load(io.BytesIO(archive.read("weights.pt")), weights_only=True)
        except FileNotFoundError:
            raise
        except (KeyError, zipfile.BadZipFile, json.JSONDecodeError, RuntimeError, UnicodeDecodeError) as exc:
            raise MetaLossSpecError(f"{path!r} is not a model-based ML3 loss written by LossAndRate.save ({exc}).") from exc
        if config.get("format") != FORMAT:
            raise MetaLossSpecError(f"{path!r} has format {config.get('format')!r}, expected {FORMAT!r}.")
        loss_net = config.get("loss_net")
        module = cls(config["feature_dim"], config["action_dim"], tuple(config["hidden_sizes"]), config["alpha_max"],
                     config["alpha_init"], config.get("metadata"), relative_target=config.get("relative_target", False),
                     loss_form=config.get("loss_form", "quadratic"),
                     target_bound=loss_net.get("target_bound") if isinstance(loss_net, dict) else None,
                     time_steps=config.get("time_steps"))
        module.load_state_dict(state)
        return module


__all__ = ["PolicyBatch", "LossAndRate"]
