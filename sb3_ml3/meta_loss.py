"""The learned loss M_phi of ML3 (paper Eq. 3) and its file.

A :class:`MetaLoss` is a small MLP that maps a named, ordered set of input
fields (for example ``y_pred:1, y_target:1`` in regression, or
``obs:11, action:2, mean:2, std:2, goal:2`` in model-free RL) to one loss
value per sample.  The optimizee is trained by gradient descent on the mean of
these values; the loss parameters phi are themselves meta-trained.

A meta-loss is meant to travel: it is saved on its own as a zip archive with

* ``meta_loss.json``: format version, the input spec, the architecture and any
  JSON metadata (e.g. the observation normalisation it was trained with);
* ``phi.pt``: the weights, read back with ``torch.load(weights_only=True)`` so
  that loading a file never executes code.

Its inputs are named by an :class:`~sb3_ml3.input_spec.InputSpec`; the surrogate family (PPO's clipped
surrogate plus a learned correction) computes its fixed part with :mod:`sb3_ml3.surrogates`.

Loading checks the archive, the architecture and, when asked, the input spec
against the setting it is loaded into, and says what differs.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from sb3_ml3.input_spec import InputSpec, MetaLossSpecError
from sb3_ml3.meta_loss_file import read_archive, write_archive
from sb3_ml3.surrogates import (PENALTY_BIAS, TARGET_WEIGHT_BIAS, check_family, check_target_options, ppo_surrogate,
                                pull_gate)

FORMAT_VERSION = 1

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}


def _square(x: torch.Tensor) -> torch.Tensor:
    return x * x


#: Output transforms applied to the last layer: they decide whether the loss is bounded below.
OUTPUTS: dict[str, Any] = {
    "identity": lambda x: x,
    "softplus": nn.functional.softplus,
    "square": _square,
    "abs": torch.abs,
}


class MetaLoss(nn.Module):
    """The learned loss M_phi: an MLP from the named input fields to one loss value per sample.

    :param inputs: the input spec, e.g. ``"y_pred:1, y_target:1"`` (see :class:`InputSpec`).
    :param hidden_sizes: widths of the hidden layers; the paper uses two layers of 40 (Sec. IV.A).
    :param activation: hidden activation, one of :data:`ACTIVATIONS`.
    :param output: output transform, one of :data:`OUTPUTS`; ``"softplus"`` bounds the loss below,
        which keeps the optimizee from being driven to infinity by an unbounded learned loss.
    :param bias: whether the linear layers have biases.
    :param metadata: JSON-serialisable facts saved with the loss (task, normalisation, ...).

    Call it with one tensor per field, as keywords (``meta_loss(y_pred=p, y_target=y)``), a mapping,
    or positionally in spec order. It returns the per-sample loss with the batch shape of its inputs;
    :meth:`loss` returns the mean, the scalar the optimizee descends (Eq. 2-3).
    """

    def __init__(
        self,
        inputs: Union[InputSpec, str, Mapping[str, int], Sequence[tuple[str, int]]],
        hidden_sizes: Sequence[int] = (40, 40),
        activation: str = "relu",
        output: str = "identity",
        bias: bool = True,
        metadata: Mapping[str, Any] | None = None,
        quadratic: Sequence[str] = (),
        quadratic_reference: Mapping[str, str] | None = None,
        surrogate: str | None = None,
        clip_range: float = 0.2,
        correction_fields: Sequence[str] | None = None,
        correction: str = "free",
        target_bound: float | None = None,
        pull_updates: int | None = None,
        pull_scale: float | None = None,
        pull_learning_rate: float | None = None,
    ) -> None:
        super().__init__()
        self.spec = InputSpec.parse(inputs)
        self.surrogate = surrogate
        self.clip_range = float(clip_range)
        self.correction = correction
        self.correction_fields = check_family(self.spec, surrogate, self.clip_range, correction, correction_fields,
                                              bool(quadratic))
        self.target_bound, self.pull_updates, self.pull_scale, self.pull_learning_rate = check_target_options(
            correction, self.correction_fields, target_bound, pull_updates, pull_scale, pull_learning_rate,
            quadratic=bool(quadratic))
        widths = dict(self.spec.fields)  # what a target reads, in order (width-1 fields may come as (B,))
        self._context = (InputSpec(tuple((f, widths[f]) for f in self.correction_fields)) if correction == "target"
                         else None)
        if activation not in ACTIVATIONS:
            raise MetaLossSpecError(f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        if output not in OUTPUTS:
            raise MetaLossSpecError(f"Unknown output transform {output!r}; choose one of {sorted(OUTPUTS)}.")
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if any(h < 1 for h in self.hidden_sizes):
            raise MetaLossSpecError(f"Hidden sizes must be positive, got {self.hidden_sizes}.")
        self.activation = activation
        self.output = output
        self.bias = bool(bias)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.quadratic = tuple(quadratic)
        unknown = [name for name in self.quadratic if name not in self.spec.names]
        if unknown or len(set(self.quadratic)) != len(self.quadratic):
            raise MetaLossSpecError(f"quadratic fields {list(self.quadratic)} must be distinct input fields of [{self.spec}].")
        if self.quadratic and len(self.quadratic) == len(self.spec.fields):
            raise MetaLossSpecError("A quadratic meta-loss needs at least one input field that is not quadratic (its context).")
        widths = dict(self.spec.fields)
        self._quadratic_dim = sum(widths[name] for name in self.quadratic)
        self._columns: dict[str, slice] = {}  # each field's columns in the concatenated input
        start = 0
        for name, width in self.spec.fields:
            self._columns[name] = slice(start, start + width)
            start += width
        self.quadratic_reference = dict(quadratic_reference or {})
        for name, ref in self.quadratic_reference.items():
            if name not in self.quadratic or ref not in self.spec.names or ref in self.quadratic:
                raise MetaLossSpecError(
                    f"quadratic_reference {self.quadratic_reference} must map quadratic fields {list(self.quadratic)} "
                    f"to context fields of [{self.spec}]."
                )
            if widths[name] != widths[ref]:
                raise MetaLossSpecError(f"quadratic_reference: {name!r} and {ref!r} must have the same width.")
        layers: list[nn.Module] = []
        width = self.spec.dim - self._quadratic_dim
        if self.correction_fields is not None:
            width = sum(dict(self.spec.fields)[f] for f in self.correction_fields)
        width += 1 if surrogate and correction != "target" else 0  # a surrogate's correction also reads log r
        for hidden in self.hidden_sizes:
            layers += [nn.Linear(width, hidden, bias=self.bias), ACTIVATIONS[activation]()]
            width = hidden
        n_out = 2 * self._quadratic_dim if self.quadratic else 1
        if correction == "target":
            n_out = 1 + widths["mean"]  # the weight and the target action
        layers.append(nn.Linear(width, n_out, bias=self.bias))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform weights and zero biases (the initialisation of the paper's code).

        A surrogate family's last layer starts at zero: the loss is then exactly PPO's surrogate, and its
        meta-gradient is not (the last layer's gradient is the hidden activations).
        """
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        for module in linears:
            fan_out, fan_in = module.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            with torch.no_grad():
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        if self.surrogate is not None:
            with torch.no_grad():
                linears[-1].weight.zero_()
                if self.correction == "penalty" and linears[-1].bias is not None:
                    linears[-1].bias.fill_(PENALTY_BIAS)
                if self.correction == "target" and linears[-1].bias is not None:
                    linears[-1].bias[0] = TARGET_WEIGHT_BIAS

    # ------------------------------------------------------------------ evaluation
    def _fields(self, args: tuple, kwargs: dict) -> Mapping[str, torch.Tensor]:
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            return args[0]
        if args and kwargs:
            raise MetaLossSpecError("Call the meta-loss with positional tensors or with keywords, not both.")
        if args:
            if len(args) != len(self.spec.fields):
                raise MetaLossSpecError(
                    f"The meta-loss expects {len(self.spec.fields)} inputs [{self.spec}] but got {len(args)} tensors."
                )
            return dict(zip(self.spec.names, args))
        return kwargs

    def forward(self, *args: Any, **kwargs: torch.Tensor) -> torch.Tensor:
        """Per-sample loss values M_phi(inputs), with the inputs' batch shape."""
        fields = self._fields(args, kwargs)
        if self.surrogate is not None:
            return self.surrogate_parts(fields).sum(0)
        if not self.quadratic:
            x = self.spec.concat(fields).to(self.net[0].weight.dtype)
            return OUTPUTS[self.output](self.net(x)).squeeze(-1)
        # Quadratic form: M = sum_j w_j(c) * (q_j - t_j(c))^2 for the quadratic fields q, with the target t
        # and the weight w (> 0) computed from the context c (the other fields). Bounded below by zero.
        q, target, weight = self.quadratic_form(fields)
        return OUTPUTS[self.output]((weight * (q - target) ** 2).sum(-1))

    def surrogate_parts(self, *args: Any, **kwargs: torch.Tensor) -> torch.Tensor:
        """(surrogate, correction) per sample, stacked on dim 0, of a surrogate-family loss M = L_PPO + C_phi.

        C_phi is the MLP of log r and all inputs, or the ``correction_fields`` only (zero at initialisation).
        With ``correction_fields=("advantage",)`` it is a learned drift in the ratio and the advantage, as in
        Lu et al. 2022 (Discovered Policy Optimisation): it can reweigh PPO's update but not teach a target
        action that ignores the rewards. C_phi is what meta-training has added to PPO's update, worth
        inspecting on its own.
        """
        if self.surrogate is None:
            raise MetaLossSpecError("surrogate_parts needs a surrogate-family meta-loss (built with surrogate='ppo').")
        fields = self._fields(args, kwargs)
        base, log_ratio = ppo_surrogate(fields, self.clip_range)
        if self.correction == "target":  # w(c) ||mean - t(c)||^2
            target, weight = self.pull_target(fields)
            correction = weight * ((fields["mean"].to(target.dtype) - target) ** 2).sum(-1)
            return torch.stack([base.to(correction.dtype), correction])
        x = self.spec.concat(fields).to(self.net[0].weight.dtype)
        if self.correction_fields is not None:
            x = torch.cat([x[..., self._columns[f]] for f in self.correction_fields], dim=-1)
        out = self.net(torch.cat([x, log_ratio.unsqueeze(-1).to(x.dtype)], -1)).squeeze(-1)
        if self.correction == "penalty":
            correction = log_ratio.to(out.dtype) ** 2 * nn.functional.softplus(out)
        else:
            correction = OUTPUTS[self.output](out)
        return torch.stack([base.to(correction.dtype), correction])

    def pull_target(self, *args: Any, **kwargs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t(c), w(c)) of a ``correction="target"`` loss: the action it pulls the policy mean to, and how hard.

        Reads only the context fields (``correction_fields``), so it can be evaluated as a policy of its own.
        """
        if self.correction != "target":
            raise MetaLossSpecError("pull_target needs a surrogate-family loss with correction='target'.")
        fields = self._fields(args, kwargs)
        out = self.net(self._context.concat({f: fields[f] for f in self.correction_fields}).to(self.net[0].weight.dtype))
        target = out[..., 1:] if self.target_bound is None else self.target_bound * torch.tanh(out[..., 1:])
        weight = nn.functional.softplus(out[..., 0])
        if self.pull_scale is not None:
            weight = weight * self.pull_scale
        if self.pull_updates is not None:
            weight = weight * pull_gate(fields["policy_age"].reshape(weight.shape).to(weight.dtype), self.pull_updates)
        return target, weight

    def quadratic_form(self, *args: Any, **kwargs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, t(c), w(c)) of a quadratic meta-loss M = sum_j w_j(c) (q_j - t_j(c))^2, each ``(..., width)``.

        q is the concatenation of the ``quadratic`` fields, t the target the learned loss pulls them to
        (``r + t(c)`` for a field with a ``quadratic_reference`` r; ``target_bound`` b makes t(c) b tanh(.)) and
        w = softplus of the net's second half. Lets one inspect what a learned loss teaches, e.g. how far its
        target for the policy mean is from an expert's actions.
        """
        if not self.quadratic:
            raise MetaLossSpecError("quadratic_form needs a quadratic meta-loss (built with quadratic=[...]).")
        x = self.spec.concat(self._fields(args, kwargs)).to(self.net[0].weight.dtype)
        offsets = self._columns
        context = torch.cat([x[..., offsets[n]] for n in self.spec.names if n not in self.quadratic], dim=-1)
        q = torch.cat([x[..., offsets[n]] for n in self.quadratic], dim=-1)
        out = self.net(context)
        target, weight = out[..., : self._quadratic_dim], out[..., self._quadratic_dim :]
        if self.target_bound is not None:  # inside [-b, b] (a tanh policy's box for b < 1), or a bounded change
            target = self.target_bound * torch.tanh(target)
        if self.quadratic_reference:
            reference = [
                x[..., offsets[self.quadratic_reference[n]]] if n in self.quadratic_reference
                else torch.zeros_like(x[..., offsets[n]])
                for n in self.quadratic
            ]
            target = target + torch.cat(reference, dim=-1)
        return q, target, nn.functional.softplus(weight)

    def loss(self, *args: Any, **kwargs: torch.Tensor) -> torch.Tensor:
        """The scalar learned loss L_learned = E[M_phi(inputs)] (Eq. 3) the optimizee descends."""
        return self.forward(*args, **kwargs).mean()

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The JSON description of this meta-loss: enough to rebuild it without its weights."""
        return {
            "format_version": FORMAT_VERSION,
            "inputs": self.spec.to_json(),
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "output": self.output,
            "bias": self.bias,
            "quadratic": list(self.quadratic),
            "quadratic_reference": dict(self.quadratic_reference),
            "surrogate": self.surrogate,
            "clip_range": self.clip_range,
            "correction_fields": None if self.correction_fields is None else list(self.correction_fields),
            "correction": self.correction,
            "target_bound": self.target_bound,
            "pull_updates": self.pull_updates,
            "pull_scale": self.pull_scale,
            "pull_learning_rate": self.pull_learning_rate,
            "dtype": str(self.net[0].weight.dtype).replace("torch.", ""),
            "metadata": self.metadata,
        }

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the meta-loss to ``path`` (a zip archive: JSON spec + weights; :mod:`sb3_ml3.meta_loss_file`).

        The archive is written to a temporary file and renamed over ``path``, so an interrupted
        save leaves an earlier file at ``path`` whole.
        """
        write_archive(path, self.config(), self.state_dict())

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike],
        inputs: Union[InputSpec, str, Mapping[str, int], Sequence[tuple[str, int]], None] = None,
        map_location: Union[str, torch.device] = "cpu",
    ) -> "MetaLoss":
        """Read a meta-loss written by :meth:`save`.

        :param inputs: when given, the input spec of the setting it is loaded into; a mismatch raises
            :class:`MetaLossSpecError` naming both specs.
        """
        config, weights = read_archive(path)
        return cls.from_config(config, weights, map_location=map_location, inputs=inputs, source=os.fspath(path))

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        weights: bytes | Mapping[str, torch.Tensor] | None = None,
        map_location: Union[str, torch.device] = "cpu",
        inputs: Union[InputSpec, str, Mapping[str, int], Sequence[tuple[str, int]], None] = None,
        source: str = "meta-loss",
    ) -> "MetaLoss":
        """Rebuild a meta-loss from its :meth:`config` and a state dict (or its ``torch.save`` bytes).

        With ``weights=None`` the architecture is rebuilt with fresh weights, for a caller that loads
        them afterwards (as ``ML3.load`` does).
        """
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise MetaLossSpecError(
                f"{source}: meta-loss format version {version!r} is not supported (this sb3-ml3 reads {FORMAT_VERSION})."
            )
        try:
            meta_loss = cls(
                inputs=[tuple(f) for f in config["inputs"]],
                hidden_sizes=config["hidden_sizes"],
                activation=config["activation"],
                output=config["output"],
                bias=config["bias"],
                quadratic=config.get("quadratic", ()),
                quadratic_reference=config.get("quadratic_reference") or {},
                surrogate=config.get("surrogate"),
                clip_range=config.get("clip_range", 0.2),
                correction_fields=config.get("correction_fields"),
                correction=config.get("correction", "free"),
                target_bound=config.get("target_bound"),
                pull_updates=config.get("pull_updates"),
                pull_scale=config.get("pull_scale"),
                pull_learning_rate=config.get("pull_learning_rate"),
                metadata=config.get("metadata") or {},
            )
        except KeyError as exc:
            raise MetaLossSpecError(f"{source}: the meta-loss spec lacks the key {exc}.") from exc
        if inputs is not None:
            meta_loss.spec.require(inputs, f"Loading {source}")
        dtype = getattr(torch, str(config.get("dtype", "float32")), torch.float32)
        if weights is None:
            return meta_loss.to(dtype=dtype).to(map_location)
        if isinstance(weights, (bytes, bytearray)):
            try:
                state = torch.load(io.BytesIO(weights), map_location=map_location, weights_only=True)
            except Exception as exc:  # torch raises several types for damaged pickles
                raise MetaLossSpecError(f"{source}: the meta-loss weights are corrupted ({exc}).") from exc
        else:
            state = dict(weights)
        expected = meta_loss.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            got = {k: tuple(v.shape) for k, v in state.items()}
            want = {k: tuple(v.shape) for k, v in expected.items()}
            raise MetaLossSpecError(f"{source}: the weights do not fit the saved architecture (expected {want}, found {got}).")
        if not all(torch.isfinite(v).all() for v in state.values()):
            raise MetaLossSpecError(f"{source}: the meta-loss weights contain NaN or inf; the file is unusable.")
        meta_loss.to(dtype=dtype)
        meta_loss.load_state_dict(state)
        return meta_loss.to(map_location)

    def extra_repr(self) -> str:
        family = f", surrogate={self.surrogate}, clip_range={self.clip_range}" if self.surrogate else ""
        return f"inputs=[{self.spec}], output={self.output}{family}"
