"""Loss shaping with intermediate goals on MountainCarGoal (paper Sec. IV.B.3, Fig. 6a-b): the model.

ML3 follows the model-based Algorithm 3 with the env's exact differentiable dynamics
(:func:`sb3_ml3.envs.mountain_car.torch_step`) as the model P:

* a deterministic policy pi_theta(s, g), a small MLP of (x, v, g) with a tanh output scaled to the
  force bound, is unrolled through P for ``horizon`` steps from a start state at rest: the trajectory
  tau = (s_1, a_0, ..., s_T, a_{T-1});
* the inner step (Eq. 2) theta' = theta - alpha grad_theta M_phi(tau, g), where M_phi reads each step's
  (s_{t+1}, a_t) with the goal and the time t / T, and the gradient runs through the unroll;
* the outer step descends the task loss of pi_theta' unrolled, differentiated through P and the
  inner update (:func:`sb3_ml3.functional.inner_update` inside :func:`torch.func.grad`).

Task losses (distances averaged over the T steps of the unrolled trajectory):

* **shaped** (meta-train only): |x_t - x_int| for the first ``intermediate_steps`` steps, where
  x_int = -0.95 is an intermediate goal on the left slope, then |x_t - g|;
* **unshaped**: |x_t - g| throughout.

At meta-test neither the intermediate goal nor the task loss is used: a fresh policy takes
``test_updates`` inner steps (SGD, or Adam) on M_phi alone, from start states of the train range and from start
states outside it. The metric is the distance |x_T - g| at the last step (METRICS.md).

Batching: ``B`` policies (one per start state) are stored as parameters with a leading dimension B
and evaluated with batched matrix products; the learned loss is their mean scaled by B, so each
policy takes the step its own loss gives (as in ``supervised/shaped_sine.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, grad_and_value

from sb3_ml3.atomic import jsonable
from sb3_ml3.envs.mountain_car import MAX_FORCE, MAX_POSITION, MIN_POSITION, PAPER_GOAL, torch_step
from sb3_ml3.functional import SGD, Params
from sb3_ml3.inner_optimizers import INNER_OPTIMIZERS, Adam
from sb3_ml3.meta_loss import ACTIVATIONS, MetaLoss

TASK_LOSSES = ("shaped", "unshaped")
#: families of M_phi: a tracking cost of (s_{t+1}, a_t) with targets of (t, g); a feedback cost (a_t - c(s_t, t, g))^2
#: pulling the action to a learned state-feedback target; a softplus MLP of every input; "free", the authors' form:
#: an unbounded MLP of (s_t, a_t, |s_T - g|) whose gradient reaches theta through the actions and the unrolled states
META_FORMS = ("quadratic", "feedback", "mlp", "free")
#: the policy families: an MLP; linear state feedback; the authors' "deep-linear" policy (two bias-free linear
#: layers of (x, v), PyTorch's default initialisation, the action clamped to the force bound)
POLICY_KINDS = ("mlp", "linear", "deep-linear")
#: the meta-loss's per-step inputs: time t / T and the goal (context), the state after the action and the action
META_INPUTS = "time:1, goal:1, state:2, action:1"
#: the inputs of the "free" form (the authors'): the state the action is taken in, the action, and the distance of
#: the trajectory's last state to the goal (a reward, detached)
FREE_META_INPUTS = "state:2, action:1, distance:1"
#: how the per-step distances of a task loss are reduced: their mean, or the Frobenius norm of each segment's
#: state errors summed over the segments (the authors' code)
TASK_NORMS = ("mean", "frobenius")
#: where meta-training's policies start: a fresh draw every outer step, or one draw per seed reused at every outer
#: step and at meta-test (the authors' protocol)
POLICY_INITS = ("fresh", "fixed")


@dataclass
class MountainCarConfig:
    """Settings of ``ml3 mountain-car`` (the horizon, start, goals and their schedule are the paper's)."""

    horizon: int = 35  # T, steps of every unroll (the paper's code); reachable: the best swing needs ~25
    goal: float = PAPER_GOAL  # g = 0.5, the top of the hill
    intermediate_goal: float = -0.95  # x_int on the left slope, in the shaped task loss only
    intermediate_steps: int = 15  # the shaped loss targets x_int for the first 15 steps
    train_start_range: tuple[float, float] = (-0.6, -0.5)  # meta-train starts x_0 ~ U[range], at rest
    train_eval_starts: tuple[float, ...] = (-0.55, -0.58, -0.52)  # meta-test starts inside the range (-0.55: paper's)
    test_starts: tuple[float, ...] = (-0.7, -0.65, -0.45, -0.4)  # meta-test starts never seen at meta-train
    policy: str = "mlp"  # "mlp": (x, v, g) -> tanh(32) -> tanh(32) -> force; "linear": force = F tanh(w.(x, v, g) + b)
    policy_hidden: int = 32
    task_state: str = "position"  # "position": |x_t - target_t|; "state": ||s_t - (target, its velocity)|| (authors' code)
    goal_velocity: float = 1.0375  # with task_state="state": the velocity at the goal in the authors' code
    intermediate_velocity: float = -0.0055  # ... and at the intermediate goal
    task_norm: str = "mean"  # "mean" of the per-step distances, or "frobenius" per segment (the authors' code)
    policy_init: str = "fresh"  # "fresh" policies every outer step, or one "fixed" draw per seed (the authors')
    meta_hidden_sizes: tuple[int, ...] = (40, 40)
    meta_activation: str = "tanh"  # hidden activation of M_phi (the authors' MountainCar loss: "elu", 400 x 400)
    meta_form: str = "quadratic"  # "quadratic": M = sum w(t, g) (q - c(t, g))^2 over q = (x, v, a); "mlp"
    n_outer: int = 60  # outer steps per meta-loss (sized to the shared 2-core machine: ~1.3 s each)
    meta_restarts: int = 1  # independent meta-trainings per loss; the lowest final meta-train task loss is kept
    batch_tasks: int = 16  # B policies (start states) per outer step, each freshly initialised (Alg. 3 line 4)
    inner_steps: int = 5  # K inner steps per outer step; the task loss of every theta_k (k = 1..K) is summed
    inner_lr: float = 0.5  # alpha, also the meta-test step on M_phi
    inner_max_grad_norm: float | None = 1.0  # each policy's inner gradient clipped to this norm; None: no clip
    inner_optimizer: str = "sgd"  # "sgd" (the paper's) or "adam": inner_lr is then Adam's step size
    adam_eps: float = 1e-2  # Adam's eps in the inner step: large, so that its step stays smooth in phi
    meta_lr: float = 0.03  # eta (Adam; the meta-gradient is clipped to norm 1)
    test_updates: int = 5  # policy updates at meta-test (the paper's claim: the goal within 5)
    baseline_updates: int = 50  # updates (iterations) of the baselines: iLQR and GD on the unshaped task loss
    gd_lrs: tuple[float, ...] = (0.3, 1.0, 3.0)  # step sizes of GD on the unshaped loss, picked on train starts
    ilqr_action_cost: float = 1e-3  # r in iLQR's cost (x - g)^2 + r u^2: keeps Q_uu positive definite
    success_threshold: float = 0.05  # the env's: final distance under 0.05

    def __post_init__(self) -> None:
        sizes = ("horizon", "intermediate_steps", "policy_hidden", "batch_tasks", "inner_steps", "test_updates",
                 "baseline_updates", "meta_restarts")
        bad = [f"{k}={getattr(self, k)}" for k in sizes if int(getattr(self, k)) < 1]
        if bad or self.n_outer < 0:
            raise ValueError(f"Need positive sizes and n_outer >= 0; fix {bad or f'n_outer={self.n_outer}'}.")
        if self.intermediate_steps >= self.horizon:
            raise ValueError(f"intermediate_steps ({self.intermediate_steps}) must be below the horizon ({self.horizon}).")
        for name, allowed in (("meta_form", META_FORMS), ("policy", POLICY_KINDS), ("task_state", ("position", "state")),
                              ("task_norm", TASK_NORMS), ("policy_init", POLICY_INITS),
                              ("inner_optimizer", tuple(INNER_OPTIMIZERS)),
                              ("meta_activation", tuple(sorted(ACTIVATIONS)))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        for name in ("inner_lr", "inner_max_grad_norm", "meta_lr", "success_threshold", "adam_eps"):
            if name == "inner_max_grad_norm" and self.inner_max_grad_norm is None:
                continue
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if not self.gd_lrs or any(not lr > 0 for lr in self.gd_lrs) or self.ilqr_action_cost <= 0:
            raise ValueError("gd_lrs must be positive numbers and ilqr_action_cost positive.")
        lo, hi = self.train_start_range
        positions = (self.goal, self.intermediate_goal, lo, hi, *self.train_eval_starts, *self.test_starts)
        if not lo < hi or any(not MIN_POSITION <= p <= MAX_POSITION for p in positions):
            raise ValueError(f"Positions must lie on the track [{MIN_POSITION}, {MAX_POSITION}] and the train range "
                             f"be (low, high) with low < high; got goal {self.goal}, starts {positions[2:]}.")
        if any(lo <= x <= hi for x in self.test_starts):
            raise ValueError(f"test_starts {self.test_starts} must lie outside train_start_range {(lo, hi)}: "
                             "they are the start states meta-training never sees.")
        if any(not lo <= x <= hi for x in self.train_eval_starts):
            raise ValueError(f"train_eval_starts {self.train_eval_starts} must lie inside train_start_range {(lo, hi)}.")


# ---------------------------------------------------------------------------------------------- policy
def init_policy(batch: int, hidden: int, generator: torch.Generator, output_gain: float = 0.01,
                kind: str = "mlp") -> Params:
    """B independent policies pi_theta(x, v, g): Xavier-uniform weights, zero biases, shapes (B, ...).

    The output layer is scaled by ``output_gain`` (SB3 initialises its policy heads with 0.01): every fresh
    policy starts near a = 0, so that what it does after a few updates is set by the loss, not by its draw.
    ``kind="linear"``: one layer (``w`` (B, 3, 1), ``b``), the authors' policy class as one linear map, with the
    tanh bound instead of their clamp; ``hidden`` is unused. ``kind="deep-linear"``: the authors' policy itself, two
    bias-free linear layers of (x, v) (``d0`` (B, 2, hidden), ``d1`` (B, hidden, 1)) with PyTorch's default
    initialisation U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ``output_gain`` is unused (their draw is not shrunk).
    """
    if kind not in POLICY_KINDS:
        raise ValueError(f"Unknown policy kind {kind!r}; choose one of {list(POLICY_KINDS)}.")

    def xavier(fan_in: int, fan_out: int, gain: float = 1.0) -> torch.Tensor:
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(batch, fan_in, fan_out, generator=generator) * 2 - 1) * bound

    if kind == "linear":
        return {"w": xavier(3, 1, output_gain), "b": torch.zeros(batch, 1, 1)}
    if kind == "deep-linear":
        return {"d0": (torch.rand(batch, 2, hidden, generator=generator) * 2 - 1) / math.sqrt(2.0),
                "d1": (torch.rand(batch, hidden, 1, generator=generator) * 2 - 1) / math.sqrt(hidden)}
    return {"w0": xavier(3, hidden), "b0": torch.zeros(batch, 1, hidden),
            "w1": xavier(hidden, hidden), "b1": torch.zeros(batch, 1, hidden),
            "w2": xavier(hidden, 1, output_gain), "b2": torch.zeros(batch, 1, 1)}


def policy_action(params: Params, state: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """a = MAX_FORCE * tanh(MLP(x, v, g)) for B policies: ``state (B, 2)``, ``goal (B, 1)`` -> ``(B, 1)``.

    The deep-linear policy is the authors': a = clamp(s W0 W1, -F, F) of the state alone (their task has one goal).
    """
    if "d0" in params:
        raw = torch.bmm(torch.bmm(state.unsqueeze(1), params["d0"]), params["d1"]).squeeze(1)
        return torch.clamp(raw, -MAX_FORCE, MAX_FORCE)
    h = torch.cat([state, goal], dim=-1).unsqueeze(1)  # (B, 1, 3)
    if "w" in params:  # the linear policy
        return MAX_FORCE * torch.tanh(torch.baddbmm(params["b"], h, params["w"])).squeeze(1)
    h = torch.tanh(torch.baddbmm(params["b0"], h, params["w0"]))
    h = torch.tanh(torch.baddbmm(params["b1"], h, params["w1"]))
    return MAX_FORCE * torch.tanh(torch.baddbmm(params["b2"], h, params["w2"])).squeeze(1)


def unroll(params: Params, start: torch.Tensor, goal: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll B policies through the exact dynamics: states ``(B, T + 1, 2)`` (s_0 first), actions ``(B, T, 1)``."""
    if start.dim() != 2 or start.shape[-1] != 2 or goal.shape != (start.shape[0], 1):
        raise ValueError(f"unroll needs start (B, 2) and goal (B, 1); got {tuple(start.shape)}, {tuple(goal.shape)}.")
    states, actions = [start], []
    for _ in range(horizon):
        a = policy_action(params, states[-1], goal)
        actions.append(a)
        states.append(torch_step(states[-1], a))
    return torch.stack(states, 1), torch.stack(actions, 1)


def at_rest(positions: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Start states (x_0, 0) ``(B, 2)`` for positions ``(B,)``."""
    x = torch.as_tensor(positions, dtype=torch.float32).view(-1)
    return torch.stack([x, torch.zeros_like(x)], dim=-1)


def initial_policies(config: MountainCarConfig, batch: int, generator: torch.Generator,
                     fixed: Params | None = None) -> Params:
    """B policies to start from: a fresh draw, or ``fixed`` (one policy, leading dimension 1) copied B times."""
    if fixed is not None:
        return {k: v.expand(batch, *v.shape[1:]).clone() for k, v in fixed.items()}
    return init_policy(batch, config.policy_hidden, generator, kind=config.policy)


def meta_input_spec(config: MountainCarConfig) -> str:
    """The input spec of M_phi in this setting: :data:`FREE_META_INPUTS` for the free form, else :data:`META_INPUTS`."""
    return FREE_META_INPUTS if config.meta_form == "free" else META_INPUTS


# ---------------------------------------------------------------------------------------------- losses
def targets(config: MountainCarConfig, variant: str, batch: int) -> torch.Tensor:
    """The target position of each step t = 1..T of a task loss, ``(B, T)``."""
    if variant not in TASK_LOSSES:
        raise ValueError(f"Unknown task loss {variant!r}; choose one of {list(TASK_LOSSES)}.")
    target = torch.full((config.horizon,), float(config.goal))
    if variant == "shaped":
        target[: config.intermediate_steps] = config.intermediate_goal  # extra information, meta-train only
    return target.expand(batch, -1)


def state_targets(config: MountainCarConfig, variant: str, batch: int) -> torch.Tensor:
    """The target state (x, v) of each step t = 1..T, ``(B, T, 2)``: the positions of :func:`targets` with the
    authors' velocities (``goal_velocity`` at the goal, ``intermediate_velocity`` at the intermediate goal)."""
    x = targets(config, variant, batch)
    v = torch.where(x == float(config.goal), torch.tensor(float(config.goal_velocity)),
                    torch.tensor(float(config.intermediate_velocity)))
    return torch.stack([x, v], dim=-1)


def task_loss_per_policy(config: MountainCarConfig, variant: str, states: torch.Tensor) -> torch.Tensor:
    """L_T of each policy -> ``(B,)``: the mean over t = 1..T of |x_t - target_t| (``task_state="position"``)
    or of the Euclidean distance of s_t = (x_t, v_t) to its target state (``"state"``).

    ``task_norm="frobenius"`` (the authors' code): the root of the summed squared errors of each segment of steps
    with one target (the intermediate goal's, then the goal's), summed over the segments.
    """
    if config.task_state == "state":
        errors = states[:, 1:] - state_targets(config, variant, states.shape[0])
    else:
        errors = (states[:, 1:, 0] - targets(config, variant, states.shape[0])).unsqueeze(-1)
    if config.task_norm == "mean":
        return errors.norm(dim=-1).mean(-1)
    split = config.intermediate_steps if variant == "shaped" else 0
    squared = (errors ** 2).sum(-1)
    first = squared[:, :split].sum(-1).clamp_min(1e-12).sqrt() if split else torch.zeros_like(squared[:, 0])
    return first + squared[:, split:].sum(-1).clamp_min(1e-12).sqrt()


def final_distance(states: torch.Tensor, goal: float) -> torch.Tensor:
    """|x_T - g| of each trajectory ``(B, T + 1, 2)`` -> ``(B,)``: the task metric."""
    return (states[:, -1, 0] - goal).abs()


def make_meta_loss(config: MountainCarConfig, variant: str, generator: torch.Generator) -> MetaLoss:
    """M_phi over the per-step inputs :data:`META_INPUTS`.

    ``"quadratic"``: M = sum_j w_j(t, g) (q_j - c_j(t, g))^2 for q = (x_{t+1}, v_{t+1}, a_t): a learned,
    time-varying tracking cost whose targets c start at zero (the last layer's target rows are zeroed),
    so it can learn where the car should be when; ``"mlp"``: a softplus-output MLP of all inputs.
    """
    metadata = {"experiment": "mountain-car", "variant": variant, "config": jsonable(config.__dict__)}
    if config.meta_form == "free":  # the authors' unbounded MLP; its weights start as PyTorch's default Linear draw
        meta_loss = MetaLoss(meta_input_spec(config), hidden_sizes=config.meta_hidden_sizes,
                             activation=config.meta_activation, output="identity", metadata=metadata)
        with torch.no_grad():
            for layer in (m for m in meta_loss.net if isinstance(m, torch.nn.Linear)):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        return meta_loss
    if config.meta_form in ("quadratic", "feedback"):
        quadratic = ("state", "action") if config.meta_form == "quadratic" else ("action",)
        meta_loss = MetaLoss(meta_input_spec(config), hidden_sizes=config.meta_hidden_sizes,
                             activation=config.meta_activation, output="identity",
                             quadratic=quadratic, metadata=metadata)
        meta_loss.reset_parameters(generator)
        with torch.no_grad():
            meta_loss.net[-1].weight[: meta_loss.net[-1].out_features // 2].zero_()  # the target rows
    else:
        meta_loss = MetaLoss(meta_input_spec(config), hidden_sizes=config.meta_hidden_sizes,
                             activation=config.meta_activation, output="softplus",
                             metadata=metadata)
        meta_loss.reset_parameters(generator)
    return meta_loss


def meta_inputs(states: torch.Tensor, actions: torch.Tensor, goal: torch.Tensor,
                pre_action_state: bool = False) -> dict[str, torch.Tensor]:
    """The learned loss's per-step fields ``(B, T, .)`` of a trajectory: t / T, g, the state and a_t.

    The state is s_{t+1}, the one the action led to, or with ``pre_action_state`` s_t, the one it was taken in
    (the feedback form's context: its target action is a function of where the car is).
    """
    batch, horizon = actions.shape[:2]
    time = (torch.arange(1, horizon + 1, dtype=states.dtype) / horizon).view(1, -1, 1).expand(batch, -1, -1)
    state = states[:, :-1] if pre_action_state else states[:, 1:]
    return {"time": time, "goal": goal.unsqueeze(1).expand(-1, horizon, -1), "state": state, "action": actions}


def free_meta_inputs(config: MountainCarConfig, states: torch.Tensor, actions: torch.Tensor,
                     goal: torch.Tensor) -> dict[str, torch.Tensor]:
    """The "free" form's per-step fields ``(B, T, .)``: s_t (the state the action is taken in), a_t, and the last
    state's distance to the goal (of the task state: |x_T - g|, or ||s_T - (g, v_g)||), detached as a reward."""
    horizon = actions.shape[1]
    last = states[:, -1].detach()
    if config.task_state == "state":
        target = torch.cat([goal, torch.full_like(goal, float(config.goal_velocity))], dim=-1)
        distance = (last - target).norm(dim=-1, keepdim=True)
    else:
        distance = (last[:, :1] - goal).abs()
    return {"state": states[:, :-1], "action": actions, "distance": distance.unsqueeze(1).expand(-1, horizon, -1)}


def clip_scales(grads: Params, max_norm: float | None) -> dict[str, torch.Tensor] | None:
    """Per-policy clip factors min(1, max_norm / ||g_b||) over all of policy b's gradients (leading dimension B),
    shaped to multiply each gradient; None when ``max_norm`` is None (no clip). Differentiable."""
    if max_norm is None:
        return None
    norms = torch.sqrt(sum((g.flatten(1) ** 2).sum(1) for g in grads.values()) + 1e-12)
    scale = torch.clamp(max_norm / norms, max=1.0)
    return {k: scale.view(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}


class MountainCarML3:
    """The pure functions of one setting: the learned loss of B policies, the task losses, and the updates."""

    def __init__(self, config: MountainCarConfig, meta_template: MetaLoss) -> None:
        self.config = config
        self.meta_template = meta_template

    def learned_loss(self, params: Params, phi: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """B * mean over policies and steps of M_phi(tau, g): each policy's inner step is its own (Eq. 2-3)."""
        start, goal = batch
        states, actions = unroll(params, start, goal, self.config.horizon)
        if self.config.meta_form == "free":
            fields = free_meta_inputs(self.config, states, actions, goal)
        else:
            fields = meta_inputs(states, actions, goal, pre_action_state=self.config.meta_form == "feedback")
        values = torch.func.functional_call(self.meta_template, phi, (fields,))
        return values.mean() * start.shape[0]

    def task_loss(self, variant: str, params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean over the B policies of L_T (shaped or unshaped), through the dynamics."""
        start, goal = batch
        states, _ = unroll(params, start, goal, self.config.horizon)
        return task_loss_per_policy(self.config, variant, states).mean()

    def meta_objective(self, variant: str, phi: Params, params: Params,
                       batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """sum_k L_T(theta_k(phi)) over K inner steps from theta_0 = ``params``: differentiable w.r.t. phi."""
        total, state = torch.zeros(()), None
        for _ in range(self.config.inner_steps):
            params, state = self.inner_step(params, phi, batch, state)
            total = total + self.task_loss(variant, params, batch)
        return total

    def inner_step(self, params: Params, phi: Params, batch: tuple[torch.Tensor, torch.Tensor],
                   state: Any = None) -> tuple[Params, Any]:
        """``(theta', the rule's state)``: theta' = theta - alpha clip(grad_theta M_phi) (Eq. 2) with SGD, or
        Adam's step on the clipped gradient (``inner_optimizer="adam"``, step size alpha, its ``state`` the last
        call's for these policies, None for fresh ones). Each policy's gradient is clipped to its own norm.

        The clip (``inner_max_grad_norm`` per policy, none when it is None, differentiable) bounds how far one SGD
        update can move a policy: an unbounded step drives the tanh output into saturation, where every gradient
        -- the learned loss's and the meta-gradient -- vanishes. Adam's step is bounded by alpha per parameter
        whatever the gradient's scale, so one update moves any initial draw about as far.
        """
        grads = grad(self.learned_loss)(params, phi, batch)
        scales = clip_scales(grads, self.config.inner_max_grad_norm)
        if scales is not None:  # None: the authors' plain SGD step
            grads = {k: g * scales[k] for k, g in grads.items()}
        rule = Adam(eps=self.config.adam_eps) if self.config.inner_optimizer == "adam" else SGD()
        return rule.step(params, grads, self.config.inner_lr, state)

    def meta_gradient(self, variant: str, phi: Params, params: Params,
                      batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[Params, torch.Tensor]:
        """grad_phi of :meth:`meta_objective` and its value (the outer step's Eq. 5-6)."""
        return grad_and_value(lambda p: self.meta_objective(variant, p, params, batch))(phi)

    def final_distances(self, params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """|x_T - g| of each of the B policies (no gradient)."""
        with torch.no_grad():
            states, _ = unroll(params, batch[0], batch[1], self.config.horizon)
        return final_distance(states, self.config.goal)


__all__ = ["MountainCarConfig", "MountainCarML3", "TASK_LOSSES", "META_INPUTS", "FREE_META_INPUTS", "META_FORMS",
           "POLICY_KINDS", "TASK_NORMS", "POLICY_INITS", "free_meta_inputs", "meta_input_spec", "clip_scales",
           "init_policy", "policy_action", "unroll", "at_rest", "targets", "state_targets", "task_loss_per_policy",
           "final_distance", "make_meta_loss", "meta_inputs", "initial_policies"]
