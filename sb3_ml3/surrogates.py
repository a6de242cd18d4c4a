"""The fixed part of the surrogate loss family: PPO's clipped surrogate, per sample.

A meta-loss built with ``surrogate="ppo"`` (:class:`sb3_ml3.MetaLoss`) is this surrogate plus a learned
correction C_phi, so that ML3 starts at PPO's update and meta-training only has to improve on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sb3_ml3.input_spec import InputSpec, MetaLossSpecError

#: Loss families with a fixed, known part: ``"ppo"`` is PPO's clipped surrogate plus a learned correction.
SURROGATES = ("ppo",)
#: forms of the surrogate family's correction C_phi: ``"free"`` is the MLP's output (zero at initialisation);
#: ``"penalty"`` is (log r)^2 softplus(MLP), a learned per-sample trust region: non-negative, zero with zero
#: slope at r = 1, so it can slow the policy's change on some samples but never push it away from pi_old;
#: ``"target"`` is w(c) ||mean - t(c)||^2, a learned pull of the policy mean towards a target action t(c) of the
#: context c (by default the observation and the goal), so that the loss can carry what it learned about the
#: task family (where to move for a goal) into a new policy while PPO's surrogate keeps learning from rewards
CORRECTIONS = ("free", "penalty", "target")
#: the penalty's initial weight softplus(PENALTY_BIAS) ~ 0.0067: the loss starts within 3e-4 of PPO's
#: surrogate inside the clip range, and the penalty's parameters get a gradient from the first outer step
PENALTY_BIAS = -5.0
#: the target correction's initial weight softplus(TARGET_WEIGHT_BIAS) ~ 0.049 (its target starts at zero action):
#: a weak pull next to the surrogate, whose target and weight both get a gradient from the first outer step
TARGET_WEIGHT_BIAS = -3.0
#: the context the target correction reads by default
TARGET_CONTEXT = ("obs", "goal", "policy_age")
#: the ``policy_age`` input is k / (k + POLICY_AGE_HALF) for a policy that has had k inner updates
POLICY_AGE_HALF = 25.0
#: inputs a target may not read: they depend on the policy being trained, so a target of them would move with it
POLICY_FIELDS = ("mean", "std", "action", "old_log_prob", "advantage")
#: the inputs the ``"ppo"`` family computes its surrogate from
PPO_SURROGATE_FIELDS = ("action", "mean", "std", "old_log_prob", "advantage")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def ppo_surrogate(fields: Mapping[str, torch.Tensor], clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per sample, -min(r A, clip(r, 1 - eps, 1 + eps) A), and log r.

    r = pi(a | mean, std) / pi_old(a) with pi a diagonal Gaussian, pi_old's log-density given
    (``old_log_prob``) and A the advantage. log r is clamped to [-20, 20] so that r stays finite.
    """
    mean, std, action = fields["mean"], fields["std"], fields["action"]
    log_prob = (-0.5 * ((action - mean) / std) ** 2 - torch.log(std) - _LOG_SQRT_2PI).sum(-1)
    old, advantage = fields["old_log_prob"], fields["advantage"]
    old = old.squeeze(-1) if old.dim() > log_prob.dim() else old
    advantage = advantage.squeeze(-1) if advantage.dim() > log_prob.dim() else advantage
    log_ratio = torch.clamp(log_prob - old, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return -torch.min(ratio * advantage, clipped * advantage), log_ratio


def check_family(spec: InputSpec, surrogate: str | None, clip_range: float, correction: str,
                 correction_fields: Sequence[str] | None, quadratic: bool) -> tuple[str, ...] | None:
    """Check a meta-loss's family settings against its inputs; return the fields its correction reads.

    None means every input (and log r); a ``"target"`` correction defaults to :data:`TARGET_CONTEXT`.
    Raises :class:`MetaLossSpecError` with what to change.
    """
    if surrogate is not None:
        if surrogate not in SURROGATES:
            raise MetaLossSpecError(f"Unknown surrogate {surrogate!r}; choose one of {list(SURROGATES)} or None.")
        missing = [f for f in PPO_SURROGATE_FIELDS if f not in spec.names]
        if missing:
            raise MetaLossSpecError(
                f"surrogate='ppo' computes PPO's clipped surrogate from the inputs {list(PPO_SURROGATE_FIELDS)}; "
                f"[{spec}] lacks {missing}."
            )
        if quadratic:
            raise MetaLossSpecError("A meta-loss is either a quadratic form or a surrogate family, not both.")
        if not 0.0 < clip_range < 1.0:
            raise MetaLossSpecError(f"clip_range must lie in (0, 1), got {clip_range}.")
    if correction not in CORRECTIONS:
        raise MetaLossSpecError(f"Unknown correction {correction!r}; choose one of {list(CORRECTIONS)}.")
    fields = None if correction_fields is None else tuple(correction_fields)
    if correction == "target":
        fields = fields or tuple(f for f in TARGET_CONTEXT if f in spec.names)
        if surrogate is None or not fields or any(f in POLICY_FIELDS for f in fields):
            raise MetaLossSpecError(
                f"correction='target' pulls the policy mean towards a target of the context; it needs a surrogate "
                f"family and context fields that do not depend on the policy (not {list(POLICY_FIELDS)}), got "
                f"correction_fields {list(fields)}."
            )
    if fields is not None:
        unknown = [f for f in fields if f not in spec.names]
        if surrogate is None or unknown or len(set(fields)) != len(fields):
            raise MetaLossSpecError(
                f"correction_fields {list(fields)} must be distinct inputs of [{spec}] of a "
                "surrogate-family loss (the correction always reads log r as well)."
            )
    return fields


def widen_target_context(meta_loss: Any, extra: Sequence[tuple[str, int]]) -> Any:
    """A copy of a ``correction="target"`` loss whose target and weight also read the inputs ``extra``
    ((name, width) pairs, appended to its inputs and its context), starting as the same function.

    The first layer's weights for the new inputs start at zero and every other weight is copied, so the
    copy's loss, target and weight equal the original's at any value of the new inputs; meta-training it
    then learns how they should matter (e.g. ``("policy_age", 1)``: a pull that lets go of a trained policy).
    """
    if meta_loss.correction != "target":
        raise MetaLossSpecError(f"widen_target_context needs a correction='target' loss, not {meta_loss.correction!r}.")
    extra = [(str(name), int(width)) for name, width in extra]
    taken = [name for name, _ in extra if name in meta_loss.spec.names]
    if not extra or taken:
        raise MetaLossSpecError(f"give new inputs to add to [{meta_loss.spec}]" + (f"; it already reads {taken}." if taken else "."))
    config = meta_loss.config()
    config["inputs"] = [list(f) for f in meta_loss.spec.fields] + [[name, width] for name, width in extra]
    config["correction_fields"] = list(meta_loss.correction_fields) + [name for name, _ in extra]
    metadata = dict(config["metadata"])
    if "meta_inputs" in metadata:
        metadata["meta_inputs"] = list(metadata["meta_inputs"]) + [name for name, _ in extra]
    metadata["widened_from"] = {"inputs": meta_loss.spec.to_json(), "added": [name for name, _ in extra]}
    config["metadata"] = metadata
    state = {k: v.detach().clone() for k, v in meta_loss.state_dict().items()}
    first = state["net.0.weight"]
    state["net.0.weight"] = torch.cat([first, first.new_zeros(first.shape[0], sum(w for _, w in extra))], dim=1)
    return type(meta_loss).from_config(config, state, source="the widened meta-loss")


def check_target_options(correction: str, fields: Sequence[str] | None, target_bound: float | None,
                         pull_updates: int | None, pull_scale: float | None = None,
                         pull_learning_rate: float | None = None, quadratic: bool = False
                         ) -> tuple[float | None, int | None, float | None, float | None]:
    """Check a target correction's options; return them as (float, int, float, float) or None.

    ``target_bound`` b makes the target b tanh(.), inside an action box [-b, b]: a pulled policy mean then keeps PPO's
    gradient, which a mean far past the bounds (every sample of it clipped by the env) loses. ``pull_updates`` K
    lets the pull act on a policy's first K inner updates only, read from the ``policy_age`` input. ``pull_scale`` k
    multiplies the learned weight w(c): a fixed setting of a derived loss (how hard a new policy is pulled to the
    same learned target), chosen like ``pull_updates`` on train-split goals. ``pull_learning_rate`` is the inner
    step size ML3 uses for the K pulled updates (then its own schedule again): the pull is a regression onto the
    target, which takes larger steps than PPO's surrogate; it needs ``pull_updates``. A ``quadratic`` loss takes
    ``target_bound`` too: its target t(c) becomes b tanh(.) (the change from a ``quadratic_reference``, where it has one).
    """
    if target_bound is not None and ((correction != "target" and not quadratic) or not _positive_number(target_bound)):
        raise MetaLossSpecError(f"target_bound must be a positive number for correction='target' or a quadratic loss, "
                                f"got {target_bound!r}.")
    count = isinstance(pull_updates, int) and not isinstance(pull_updates, bool)  # 2.7 or "3" is refused, not cut
    if pull_updates is not None and (not count or pull_updates < 1 or "policy_age" not in (fields or ())
                                     or correction != "target"):
        raise MetaLossSpecError(f"pull_updates needs a target correction that reads policy_age and a count >= 1, got "
                                f"{pull_updates!r} with context {None if fields is None else list(fields)}.")
    if pull_scale is not None and (correction != "target" or not _positive_number(pull_scale)):
        raise MetaLossSpecError(f"pull_scale must be a positive finite number for correction='target', got "
                                f"{pull_scale!r}.")
    if pull_learning_rate is not None and (pull_updates is None or not _positive_number(pull_learning_rate)):
        raise MetaLossSpecError(f"pull_learning_rate must be a positive finite number for a target loss with "
                                f"pull_updates, got {pull_learning_rate!r} (pull_updates {pull_updates!r}).")
    return ((None if target_bound is None else float(target_bound)), (None if pull_updates is None else int(pull_updates)),
            (None if pull_scale is None else float(pull_scale)),
            (None if pull_learning_rate is None else float(pull_learning_rate)))


def _positive_number(value: Any) -> bool:
    """A real number (not a bool or a string) in (0, inf): NaN and inf are refused."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def policy_age_feature(updates: Any) -> Any:
    """The ``policy_age`` input of a policy that has had ``updates`` inner updates (a number or a tensor):
    k / (k + POLICY_AGE_HALF), 0 for a new policy and below 1."""
    return updates / (updates + POLICY_AGE_HALF)


def pull_gate(policy_age: torch.Tensor, pull_updates: int) -> torch.Tensor:
    """1 where the ``policy_age`` input says the policy has had fewer than ``pull_updates`` inner updates, else 0."""
    return (policy_age < policy_age_feature(pull_updates)).to(policy_age.dtype)
