"""A shard of meta-train tasks: the optimizee copies a worker owns and the meta-gradients it computes.

Pure PyTorch (no Ray), so the single-process meta-trainer and every Ray worker run the same code on
the same tasks; only the split of the task indices differs. Each task ``i`` of a run with seed ``s``
draws everything it needs (its data, its optimizee initialisations theta_0) from its own generator
seeded by ``(s, i)``: which worker holds the task, and how many workers there are, cannot change what
it computes.

One outer step on a shard (Alg. 1, Eq. 2-6): for each task, re-initialise theta every ``reset_every``
steps, take the K differentiable inner steps theta' = theta - alpha grad_theta E[M_phi] through
:func:`sb3_ml3.functional.meta_gradient`, and add grad_phi L_T(theta') to the shard's sum. The driver
divides the sum over all shards by the number of tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from sb3_ml3.functional import Params, meta_gradient


class ProblemParts(NamedTuple):
    """What a worker builds from a :class:`ProblemSpec`: the pure functions of one meta-training problem.

    * ``learned_loss(theta, phi, batch) -> scalar``: L_learned (Eq. 3);
    * ``task_loss(theta, query) -> scalar``: L_T (Eq. 5);
    * ``init_params(generator) -> theta_0``: a fresh optimizee;
    * ``task_data(task_index, generator) -> (batch, query)``: the task's data, drawn once per task.
    """

    learned_loss: Callable[[Params, Params, Any], torch.Tensor]
    task_loss: Callable[[Params, Any], torch.Tensor]
    init_params: Callable[[torch.Generator], Params]
    task_data: Callable[[int, torch.Generator], tuple[Any, Any]]


@dataclass(frozen=True)
class ProblemSpec:
    """A meta-training problem as data that travels to workers (pickled), and the inner-step settings.

    :param build: ``() -> ProblemParts``, called once in each worker; a module-level function or a
        ``functools.partial`` of one, so that it pickles (closures over live modules need not).
    :param seed: the run's seed; task ``i`` draws from :func:`task_generator` ``(seed, i)``.
    :param n_tasks: tasks (optimizees) per outer step, split across the workers.
    :param fingerprint: what identifies the problem (JSON-able); a checkpoint resumes only the same one.
    """

    build: Callable[[], ProblemParts]
    seed: int
    n_tasks: int
    inner_lr: float
    inner_steps: int = 1
    reset_every: int = 1
    first_order: bool = False
    fingerprint: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_tasks < 1 or self.inner_steps < 1 or self.reset_every < 1:
            raise ValueError(f"Need n_tasks, inner_steps and reset_every >= 1, got {self.n_tasks}, "
                             f"{self.inner_steps} and {self.reset_every}.")
        if not self.inner_lr > 0:
            raise ValueError(f"The inner step size must be positive, got {self.inner_lr}.")

    def make_shard(self, task_ids: Sequence[int], threads: int | None = None) -> "TaskShard":
        """The shard of tasks ``task_ids`` that a worker (or this process) owns."""
        return TaskShard(self, task_ids, threads)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint it continues."""
        return {"seed": int(self.seed), "n_tasks": int(self.n_tasks), "inner_lr": float(self.inner_lr),
                "inner_steps": int(self.inner_steps), "reset_every": int(self.reset_every),
                "first_order": bool(self.first_order), "problem": dict(self.fingerprint)}


def task_generator(seed: int, task_index: int) -> torch.Generator:
    """The generator of task ``task_index`` in a run with ``seed``: independent streams per (seed, task)."""
    state = np.random.SeedSequence([int(seed), int(task_index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def split_tasks(n_tasks: int, n_shards: int) -> list[list[int]]:
    """Contiguous, near-equal shares of ``range(n_tasks)``: the first ``n_tasks % n_shards`` get one more."""
    if n_shards < 1:
        raise ValueError(f"Need at least one shard, got {n_shards}.")
    if n_shards > n_tasks:
        raise ValueError(f"{n_shards} workers for {n_tasks} tasks per outer step would leave workers idle; "
                         f"use at most {n_tasks} workers or more tasks per step (--tasks-per-step).")
    base, extra = divmod(n_tasks, n_shards)
    shares, start = [], 0
    for k in range(n_shards):
        size = base + (k < extra)
        shares.append(list(range(start, start + size)))
        start += size
    return shares


@dataclass
class ShardResult:
    """One shard's outer step: the *sum* of its tasks' meta-gradients, their task losses, its compute time."""

    grad_sum: dict[str, torch.Tensor]
    task_losses: list[float]
    task_ids: list[int]
    compute_s: float
    #: the tasks the shard holds (``task_ids`` are those that answered a gradient; a model-free task has
    #: none on its first step) and per-task statistics (model-free: env steps, episode returns)
    held: int = 0
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)


def shard_task_ids(task_ids: Sequence[int], n_tasks: int, threads: int | None) -> list[int]:
    """A shard's task indices, checked against the problem's ``n_tasks``; sets this process's torch threads."""
    bad = [i for i in task_ids if not 0 <= int(i) < n_tasks]
    if bad or not task_ids:
        raise ValueError(f"A shard needs task indices in [0, {n_tasks}), got {list(task_ids)}.")
    if threads is not None:
        torch.set_num_threads(threads)
    return [int(i) for i in task_ids]


def add_gradients(total: dict[str, torch.Tensor] | None, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``total + grads`` by name (detached; a copy of ``grads`` when ``total`` is ``None``): a shard's gradient sum."""
    if total is None:
        return {k: g.detach().clone() for k, g in grads.items()}
    return {k: total[k] + g.detach() for k, g in grads.items()}


class TaskShard:
    """The tasks ``task_ids`` of a problem: their data, generators and current optimizees theta.

    ``threads``: torch CPU threads of this process (a worker runs single-threaded, as a CPU core's share).
    """

    def __init__(self, spec: ProblemSpec, task_ids: Sequence[int], threads: int | None = None) -> None:
        self.spec = spec
        self.task_ids = shard_task_ids(task_ids, spec.n_tasks, threads)
        self.parts = spec.build()
        self.generators = {i: task_generator(spec.seed, i) for i in self.task_ids}
        self.data = {i: self.parts.task_data(i, self.generators[i]) for i in self.task_ids}
        self.params: dict[int, Params | None] = {i: None for i in self.task_ids}

    def step(self, phi: Mapping[str, torch.Tensor], iteration: int, reset: bool = False) -> ShardResult:
        """The outer step ``iteration`` on every task of the shard; ``reset`` re-initialises all optimizees
        (the driver asks for it after a skipped, non-finite step, as the single-process loop does)."""
        start = time.perf_counter()
        spec, parts = self.spec, self.parts
        phi = {name: torch.as_tensor(value).detach() for name, value in phi.items()}
        grad_sum: dict[str, torch.Tensor] | None = None
        losses = []
        for i in self.task_ids:
            theta = self.params[i]
            if reset or theta is None or iteration % spec.reset_every == 0:
                theta = parts.init_params(self.generators[i])  # Alg. 1: theta <- randomly initialise
            batch, query = self.data[i]
            grads, value, updated = meta_gradient(parts.learned_loss, parts.task_loss, theta, phi, batch, query,
                                                  spec.inner_lr, spec.inner_steps, spec.first_order,
                                                  return_updated=True)  # Eq. 2-6
            self.params[i] = {k: v.detach() for k, v in updated.items()}
            grad_sum = add_gradients(grad_sum, grads)
            losses.append(float(value))
        assert grad_sum is not None  # a shard has at least one task
        return ShardResult(grad_sum, losses, list(self.task_ids), time.perf_counter() - start,
                           held=len(self.task_ids))

    def state(self) -> dict[int, dict[str, Any]]:
        """Per task: its optimizee theta (``None`` before its first step) and its generator's state."""
        return {i: {"params": None if self.params[i] is None else {k: v.clone() for k, v in self.params[i].items()},
                    "generator": self.generators[i].get_state()} for i in self.task_ids}

    def load_state(self, state: Mapping[int, Mapping[str, Any]]) -> None:
        """Restore what :meth:`state` returned (keys are task indices; each task of the shard must be there)."""
        missing = [i for i in self.task_ids if i not in state]
        if missing:
            raise KeyError(f"The saved state has no entry for tasks {missing}; it belongs to another problem.")
        for i in self.task_ids:
            saved = state[i]
            self.generators[i].set_state(saved["generator"])
            self.params[i] = None if saved["params"] is None else {k: v.clone() for k, v in saved["params"].items()}

    def ping(self) -> int:
        """A cheap call that proves the worker is up (and its problem built)."""
        return len(self.task_ids)


__all__ = ["ProblemParts", "ProblemSpec", "ShardResult", "TaskShard", "split_tasks", "task_generator"]
