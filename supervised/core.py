"""Supervised ML3: meta-train a learned loss (Algorithm 1) and meta-test it (Algorithm 2).

The optimizee f_theta is any ``nn.Module`` used as a *template*: its architecture is called with
explicit parameter dictionaries through :func:`torch.func.functional_call`, so one template serves
every seed and task (and a ``torch.compile``-d meta-step is compiled once per process, see
:mod:`sb3_ml3.compiled`).

Meta-training (Alg. 1, Sec. III.A)::

    theta <- init                                  every ``reset_every`` outer iterations
    theta' = theta - alpha grad_theta E[M_phi(y, f_theta(x))]          (Eq. 2-3)
    phi    <- phi - eta grad_phi L_T(y_q, f_theta'(x_q))               (Eq. 5-6)
    theta  <- theta' (detached)

Meta-testing (Alg. 2): a fresh optimizee takes plain SGD steps on the frozen meta-loss, and the
same initial optimizee takes the same number of steps on the task loss, for comparison; the task
metric is recorded after every step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from sb3_ml3 import compiled
from sb3_ml3.functional import Params, apply_meta_gradient, make_meta_optimizer, meta_gradient, parameters_of
from sb3_ml3.meta_loss import MetaLoss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: ``meta_train(compile=None)`` compiles the outer step from this many outer iterations on: at the sine
#: optimizee the compile (~17 s on an empty inductor cache, ~3 s from the cache) is paid back by
#: ~1.8 ms saved per iteration (BENCHMARKS.md, "Cost of the inner/outer step").
AUTO_COMPILE_MIN_OUTER = 1000


class Task(NamedTuple):
    """One supervised task of any type: the batch the optimizee trains on and a held-out query batch.

    Each is a tuple of tensors whose first element is the optimizee's input (``(x, y)`` for regression
    and classification); tasks of one experiment share shapes, so :func:`meta_test` can stack them.
    """

    support: tuple[torch.Tensor, ...]
    query: tuple[torch.Tensor, ...]


class RegressionTask(NamedTuple):
    """A regression task (x, y) with named fields; ``support``/``query`` view it as a :class:`Task`."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    @property
    def support(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_support, self.y_support

    @property
    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_query, self.y_query


InputsFn = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The regression task loss L_T = mean (y - f(x))^2."""
    return ((prediction - target) ** 2).mean()


def prediction_and_target(prediction: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The meta-loss inputs (f_theta(x), y) of a batch (x, y): the paper's regression and classification case."""
    return prediction, batch[1]


def learned_loss_fn(
    optimizee: nn.Module, meta_loss: MetaLoss, inputs: InputsFn = prediction_and_target
) -> Callable[[Params, Params, Any], torch.Tensor]:
    """L_learned(theta, phi, batch) = E[M_phi(inputs(f_theta(x), batch))], x = batch[0] (Eq. 3).

    :param inputs: maps the optimizee's prediction and the batch to the meta-loss's input fields, in the
        order of its spec: ``(y_pred, y)`` by default; e.g. ``(x, y_pred, y)`` for the shaped sine.
    """
    n_fields = len(meta_loss.spec.fields)

    def learned_loss(params: Params, meta_params: Params, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        prediction = functional_call(optimizee, params, (batch[0],))
        fields = inputs(prediction, batch)
        if len(fields) != n_fields:
            raise ValueError(
                f"The inputs function gives {len(fields)} fields but the meta-loss expects {n_fields} [{meta_loss.spec}]."
            )
        return functional_call(meta_loss, meta_params, tuple(fields)).mean()  # Eq. 3

    return learned_loss


def task_loss_fn(optimizee: nn.Module, loss: LossFn = mse) -> Callable[[Params, Any], torch.Tensor]:
    """L_T(theta, (x, y, ...)) = loss(f_theta(x), y)."""

    def task_loss(params: Params, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return loss(functional_call(optimizee, params, (batch[0],)), batch[1])

    return task_loss


def init_params(optimizee: nn.Module, generator: torch.Generator) -> Params:
    """Fresh optimizee parameters with PyTorch's default Linear/Conv initialisation, drawn from ``generator``.

    Every weight and its layer's bias are U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in being the size of
    one output unit's weights; a parameter with no sibling ``weight`` gets fan_in 1.
    """
    named = dict(optimizee.named_parameters())
    params = {}
    for name, value in named.items():
        prefix, _, _ = name.rpartition(".")
        weight = named.get(f"{prefix}.weight" if prefix else "weight", value)
        fan_in = int(weight[0].numel()) if weight.dim() > 1 else 1
        bound = fan_in ** -0.5
        params[name] = (torch.rand(value.shape, generator=generator, dtype=value.dtype) * 2 - 1) * bound
    return params


@dataclass
class MetaTrainResult:
    """What :func:`meta_train` measured."""

    task_loss: list[float] = field(default_factory=list)  # L_T after each inner step (per outer iteration)
    eval_iterations: list[int] = field(default_factory=list)
    eval_metric: list[float] = field(default_factory=list)  # meta-test metric on the meta-train task
    skipped_steps: int = 0
    skipped_reasons: list[str] = field(default_factory=list)


def meta_train(
    meta_loss: MetaLoss,
    learned_loss: Callable[[Params, Params, Any], torch.Tensor],
    task_loss: Callable[[Params, Any], torch.Tensor],
    init_fn: Callable[[torch.Generator], Params],
    task_fn: Callable[[int], Any],
    n_outer: int,
    inner_lr: float,
    meta_lr: float,
    generator: torch.Generator,
    inner_steps: int = 1,
    reset_every: int = 1,
    first_order: bool = False,
    max_grad_norm: float | None = None,
    compile: bool | None = None,
    evaluate: Callable[[MetaLoss], float] | None = None,
    eval_every: int = 0,
    progress: Callable[[int], None] | None = None,
    meta_optimizer: torch.optim.Optimizer | None = None,
) -> MetaTrainResult:
    """Algorithm 1: learn phi so that SGD on M_phi lowers the task loss.

    :param learned_loss: ``(theta, phi, batch) -> scalar``, see :func:`learned_loss_fn`.
    :param task_loss: ``(theta, query) -> scalar``, see :func:`task_loss_fn`.
    :param init_fn: draws fresh optimizee parameters theta_0 from a generator.
    :param task_fn: ``outer_iteration -> (batch, query)``: the meta-train data of that iteration.
    :param reset_every: M, the number of inner steps after which theta is reset (Sec. III.A).
    :param compile: ``torch.compile`` the outer step (4-8x faster per iteration on CPU; compiled once per process
        and cached on disk by inductor, silently eager where compiling fails). ``None`` (default): compile when
        ``n_outer >= AUTO_COMPILE_MIN_OUTER``, where the one-off compile is paid back; ``False``: eager.
    :param evaluate: called every ``eval_every`` iterations with the meta-loss (Fig. 2c).
    """
    if n_outer < 0 or reset_every < 1:
        raise ValueError(f"Need n_outer >= 0 and reset_every >= 1, got {n_outer} and {reset_every}.")
    optimizer = meta_optimizer or make_meta_optimizer(meta_loss.parameters(), meta_lr)
    if compile is None:
        compile = n_outer >= AUTO_COMPILE_MIN_OUTER
    step_fn = meta_step_fn(learned_loss, task_loss, inner_lr, inner_steps, first_order, compile)
    result = MetaTrainResult()
    params: Params | None = None
    for iteration in range(n_outer):
        if evaluate is not None and eval_every and iteration % eval_every == 0:
            result.eval_iterations.append(iteration)
            result.eval_metric.append(float(evaluate(meta_loss)))
        if params is None or iteration % reset_every == 0:
            params = init_fn(generator)  # Alg. 1: theta <- randomly initialise
        batch, query = task_fn(iteration)
        phi = {name: p.detach() for name, p in meta_loss.named_parameters()}
        grads, value, updated = step_fn(params, phi, batch, query)
        outcome = apply_meta_gradient(optimizer, meta_loss, grads, value.detach(), max_grad_norm)  # outer step
        result.task_loss.append(outcome.task_loss)
        if not outcome.applied:
            result.skipped_steps += 1
            result.skipped_reasons.append(f"iteration {iteration}: {outcome.reason}")
            params = None  # restart from a fresh optimizee rather than continue from a diverged one
        else:
            params = {k: v.detach() for k, v in updated.items()}
        if progress is not None:
            progress(iteration)
    if evaluate is not None and eval_every:
        result.eval_iterations.append(n_outer)
        result.eval_metric.append(float(evaluate(meta_loss)))
    return result


def meta_step_fn(
    learned_loss: Callable[[Params, Params, Any], torch.Tensor],
    task_loss: Callable[[Params, Any], torch.Tensor],
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    compile: bool,
) -> Callable[..., tuple[Params, torch.Tensor, Params]]:
    """The outer step's computation for one task: (meta-gradient, task loss, theta').

    Compiled, it is one :class:`~sb3_ml3.compiled.CompiledOrEager` per process for these functions and
    settings, so later seeds and later calls reuse the compiled code (and fall back to eager together).
    """

    def build() -> Callable[..., tuple[Params, torch.Tensor, Params]]:
        def step(params: Params, phi: Params, batch: Any, query: Any) -> tuple[Params, torch.Tensor, Params]:
            return meta_gradient(learned_loss, task_loss, params, phi, batch, query, inner_lr, inner_steps,
                                 first_order, return_updated=True)

        return step

    if not compile:
        return build()
    return compiled.cached(("meta_step", learned_loss, task_loss, float(inner_lr), int(inner_steps),
                            bool(first_order)), build)


def sgd_trace(
    loss_grad: Callable[[Params, Any], Params],
    metric: Callable[[Params, Any], torch.Tensor],
    params: Params,
    batch: Any,
    query: Any,
    lr: float,
    steps: int,
) -> tuple[torch.Tensor, Params]:
    """``steps`` plain SGD steps theta <- theta - lr * loss_grad(theta, batch); metric before and after each.

    Works batched: wrap with ``vmap`` to run many independent optimizees at once.
    """
    values = [metric(params, query)]
    for _ in range(steps):
        grads = loss_grad(params, batch)
        params = {name: value - lr * grads[name] for name, value in params.items()}  # Alg. 2, line 6
        values.append(metric(params, query))
    return torch.stack(values), params


def meta_test(
    optimizee: nn.Module,
    meta_loss: MetaLoss | None,
    tasks: Sequence[Task | RegressionTask],
    init_params_per_task: Params,
    lr: float,
    steps: int,
    task_loss: LossFn = mse,
    metric: LossFn = mse,
    evaluate_on: str = "query",
    inputs: InputsFn = prediction_and_target,
    metric_fn: Callable[[Params, Any], torch.Tensor] | None = None,
    train_loss_fn: Callable[[Params, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Algorithm 2 on several tasks at once: SGD on the frozen meta-loss, or on ``task_loss`` if it is ``None``.

    :param tasks: tasks with ``support`` and ``query`` batches of equal shapes across tasks.
    :param init_params_per_task: optimizee parameters with a leading task dimension.
    :param evaluate_on: ``"query"`` (held-out points, the default) or ``"support"`` (the training
        points, as the paper's code did).
    :param inputs: the meta-loss's input fields from (prediction, batch), see :func:`learned_loss_fn`.
    :param metric_fn: ``(theta, batch) -> scalar`` recorded after each step, for metrics that need more
        than (f_theta(x), y); default ``metric(f_theta(x), y)``.
    :param train_loss_fn: ``(theta, batch) -> scalar`` to train on when ``meta_loss`` is ``None``, for
        baselines that are not a function of (f_theta(x), y); default ``task_loss(f_theta(x), y)``.
    :return: the metric per task and step, shape ``(n_tasks, steps + 1)`` (column 0: before training).
    """
    if evaluate_on not in ("query", "support"):
        raise ValueError(f"evaluate_on must be 'query' or 'support', got {evaluate_on!r}.")
    if not tasks:
        raise ValueError("meta_test needs at least one task.")
    support = _stack_batches([t.support for t in tasks])
    query = _stack_batches([t.query for t in tasks]) if evaluate_on == "query" else support

    if meta_loss is None:
        train_loss = train_loss_fn or task_loss_fn(optimizee, task_loss)
    else:
        frozen = {name: p.detach() for name, p in meta_loss.named_parameters()}
        learned = learned_loss_fn(optimizee, meta_loss, inputs)

        def train_loss(params: Params, batch: Any) -> torch.Tensor:
            return learned(params, frozen, batch)

    measure = metric_fn or task_loss_fn(optimizee, metric)

    def run(params: Params, batch: tuple[torch.Tensor, ...], held_out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        trace, _ = sgd_trace(grad(train_loss), measure, params, batch, held_out, lr, steps)
        return trace

    with torch.no_grad():
        return vmap(run)(init_params_per_task, support, query)


def _stack_batches(batches: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack the tasks' batches field by field along a new leading (task) dimension."""
    widths = {len(b) for b in batches}
    if len(widths) != 1:
        raise ValueError(f"All tasks need batches with the same number of tensors, got {sorted(widths)}.")
    try:
        return tuple(torch.stack(fields) for fields in zip(*batches))
    except RuntimeError as error:
        raise ValueError(f"The tasks' batches differ in shape and cannot be run side by side: {error}") from None


def run_seeds(
    seeds: Sequence[int],
    run_seed: Callable[[int, Callable[[int], None] | None], dict[str, Any]],
    steps_per_seed: int,
    desc: str,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], int | None]:
    """``run_seed(seed, progress_fn)`` for each seed, behind one progress bar of ``steps_per_seed`` per seed.

    Ctrl-C (``KeyboardInterrupt``) during a seed keeps the seeds finished before it and returns the seed
    it interrupted (``None`` when all finished); with no seed finished it re-raises.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds) * steps_per_seed, desc=desc, unit="it")
    per_seed: list[dict[str, Any]] = []
    try:
        for seed in seeds:
            try:
                per_seed.append(run_seed(seed, (lambda _: bar.update(1)) if bar else None))
            except KeyboardInterrupt:
                if not per_seed:
                    raise
                return per_seed, seed
    finally:
        if bar is not None:
            bar.close()
    return per_seed, None


class BestMetaLoss:
    """Meta-validation's keep-best: the weights of the meta-loss that scored lowest so far.

    Call :meth:`offer` from ``meta_train``'s ``evaluate``; strictly lower scores win, so ties keep the earlier
    loss, and a non-finite score never wins. :meth:`restore` writes the kept weights back into a loss.
    """

    def __init__(self) -> None:
        self.error = math.inf
        self.state: dict[str, torch.Tensor] | None = None
        self.index: int | None = None  # which evaluation it was
        self._n = 0

    def offer(self, loss: MetaLoss, error: float) -> float:
        """Keep ``loss``'s weights if ``error`` is the lowest finite score so far; returns ``error``."""
        if math.isfinite(error) and error < self.error:
            self.error, self.state, self.index = error, copy.deepcopy(loss.state_dict()), self._n
        self._n += 1
        return error

    def iteration(self, eval_iterations: Sequence[int]) -> int | None:
        """The outer iteration of the kept loss, given ``MetaTrainResult.eval_iterations`` (``None``: none kept)."""
        return None if self.index is None else int(eval_iterations[self.index])

    def restore(self, loss: MetaLoss) -> None:
        """Load the kept weights into ``loss`` (nothing when no score was finite)."""
        if self.state is not None:
            loss.load_state_dict(self.state)


def stack_params(params: Sequence[Params]) -> Params:
    """Stack a list of parameter dictionaries along a new leading (task) dimension."""
    return {name: torch.stack([p[name] for p in params]) for name in params[0]}


__all__ = [
    "Task",
    "RegressionTask",
    "InputsFn",
    "prediction_and_target",
    "MetaTrainResult",
    "mse",
    "learned_loss_fn",
    "task_loss_fn",
    "init_params",
    "meta_train",
    "meta_step_fn",
    "AUTO_COMPILE_MIN_OUTER",
    "meta_test",
    "sgd_trace",
    "stack_params",
    "run_seeds",
    "BestMetaLoss",
    "parameters_of",
]
