"""The driver of distributed meta-training: average the workers' meta-gradients, step phi, checkpoint.

Algorithm 1 with the outer step's expectation over tasks split across workers::

    for each outer iteration:
        every worker k, for each of its tasks i:   g_i = grad_phi L_T(theta_i'(phi))     (Eq. 2-6)
        g = (sum_k sum_{i in k} g_i) / n_tasks      (the mean over tasks, weighted by each worker's task count)
        phi <- Adam step on g                        (the same meta-optimizer as the single process)

``workers=0`` runs the same shard code in this process (no Ray): with the same problem, seed and number
of tasks, the meta-gradients agree with any number of workers up to the order of float summation.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sb3_ml3.distributed.backends import make_backend
from sb3_ml3.distributed.checkpoint import load_checkpoint, save_checkpoint
from sb3_ml3.distributed.shard import ProblemSpec, ShardResult
from sb3_ml3.functional import apply_meta_gradient, make_meta_optimizer
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import MetaTrainResult


@dataclass
class StepTimes:
    """Per outer step: the driver's wall time and the slowest worker's compute time (seconds)."""

    wall_s: list[float] = field(default_factory=list)
    slowest_compute_s: list[float] = field(default_factory=list)
    total_compute_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Medians; ``overhead_s`` = wall - slowest worker's compute (transfer, scheduling, averaging, Adam)."""
        if not self.wall_s:
            return {}
        overhead = [w - c for w, c in zip(self.wall_s, self.slowest_compute_s)]
        return {"steps": len(self.wall_s), "median_step_s": statistics.median(self.wall_s),
                "median_slowest_compute_s": statistics.median(self.slowest_compute_s),
                "median_overhead_s": statistics.median(overhead), "total_wall_s": sum(self.wall_s),
                "first_step_s": self.wall_s[0]}


class DistributedMetaTrainer:
    """Meta-train ``meta_loss`` on the tasks of ``spec`` with ``workers`` Ray workers (0: this process).

    :param checkpoint_path: where to write a checkpoint every ``checkpoint_every`` outer steps and at the end
        (``None``: none; the workers' state is still snapshotted that often, to bound what a replaced worker
        replays).
    :param max_grad_norm: clip the averaged meta-gradient's global norm (as :func:`apply_meta_gradient`).
    Use as a context manager, or call :meth:`close`, to stop the workers.
    """

    def __init__(self, meta_loss: MetaLoss, spec: ProblemSpec, meta_lr: float, workers: int = 0,
                 address: str | None = None, threads: int = 1, max_grad_norm: float | None = None,
                 checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int = 25,
                 max_restarts: int = 3, meta_optimizer: torch.optim.Optimizer | None = None) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive number of outer steps, got {checkpoint_every}.")
        if not meta_lr > 0:
            raise ValueError(f"The outer step size must be positive, got {meta_lr}.")
        self.meta_loss = meta_loss
        self.spec = spec
        self.meta_lr = float(meta_lr)
        self.max_grad_norm = max_grad_norm
        self.checkpoint_path = None if checkpoint_path is None else os.fspath(checkpoint_path)
        self.checkpoint_every = int(checkpoint_every)
        self.optimizer = meta_optimizer or make_meta_optimizer(meta_loss.parameters(), meta_lr)
        self.times = StepTimes()
        self.backend = make_backend(spec, workers, address=address, threads=threads, max_restarts=max_restarts)
        #: the shards' answers and the outcome of phi's update at the last outer step (for logs and statistics)
        self.last_results: list[ShardResult] = []
        self.last_outcome: Any = None
        #: the outer step the last :meth:`fit` started from (after a resume: the checkpoint's)
        self.start_iteration = 0

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must share with the run that resumes it."""
        return dict(self.spec.identity(), meta_lr=self.meta_lr, max_grad_norm=self.max_grad_norm,
                    meta_loss=self.meta_loss.config())

    def meta_gradient(self, iteration: int, reset: bool = False) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor,
                                                                           list[ShardResult]]:
        """The mean meta-gradient over the tasks that answered one at the current phi, and their losses; phi is
        not changed. ``None`` when no task had an update to differentiate (a model-free run's first step)."""
        phi = {name: p.detach() for name, p in self.meta_loss.named_parameters()}
        results = self.backend.step(phi, iteration, reset)
        held = sum(r.held or len(r.task_ids) for r in results)
        if held != self.spec.n_tasks:
            raise RuntimeError(f"The workers answered for {held} tasks, expected {self.spec.n_tasks}.")
        self.last_results = results
        answered = sum(len(r.task_ids) for r in results)
        losses = torch.tensor([v for r in results for v in r.task_losses])
        if answered == 0:
            return None, losses, results
        grads = {name: sum(r.grad_sum[name] for r in results if r.task_ids) / answered
                 for name in next(r for r in results if r.task_ids).grad_sum}
        return grads, losses, results

    def fit(self, n_outer: int, evaluate: Callable[[MetaLoss], float] | None = None, eval_every: int = 0,
            progress: Callable[[int], None] | None = None, resume: bool = False) -> MetaTrainResult:
        """Run outer iterations up to ``n_outer``; with ``resume`` continue from the checkpoint if there is one.

        ``evaluate(meta_loss)`` is recorded every ``eval_every`` iterations and at the end (Fig. 2c), as in
        :func:`sb3_ml3.supervised.core.meta_train`, whose :class:`MetaTrainResult` this returns. An iteration in
        which no task answered a gradient (model-free: the first) takes no step and records no task loss.
        """
        if n_outer < 0:
            raise ValueError(f"n_outer must be >= 0, got {n_outer}.")
        result, start, reset = MetaTrainResult(), 0, False
        if resume and self.checkpoint_path and os.path.exists(self.checkpoint_path):
            result, start, reset = self._load()
            if start > n_outer:
                raise ValueError(f"The checkpoint {self.checkpoint_path} is at outer step {start}, past n_outer={n_outer}.")
        self.start_iteration = start
        if progress is not None:
            for iteration in range(start):
                progress(iteration)
        for iteration in range(start, n_outer):
            if evaluate is not None and eval_every and iteration % eval_every == 0:
                result.eval_iterations.append(iteration)
                result.eval_metric.append(float(evaluate(self.meta_loss)))
            began = time.perf_counter()
            grads, losses, shards = self.meta_gradient(iteration, reset)
            reset = False
            if grads is not None:
                outcome = apply_meta_gradient(self.optimizer, self.meta_loss, grads, losses.mean(), self.max_grad_norm)
                self.last_outcome = outcome
                result.task_loss.append(outcome.task_loss)
                reset = not outcome.applied  # restart from fresh optimizees rather than continue from diverged ones
                if reset:
                    result.skipped_steps += 1
                    result.skipped_reasons.append(f"iteration {iteration}: {outcome.reason}")
            self.times.wall_s.append(time.perf_counter() - began)
            self.times.slowest_compute_s.append(max(r.compute_s for r in shards))
            self.times.total_compute_s.append(sum(r.compute_s for r in shards))
            if (iteration + 1) % self.checkpoint_every == 0 or iteration + 1 == n_outer:
                self._save(iteration + 1, result, reset)
            if progress is not None:
                progress(iteration)
        if evaluate is not None and eval_every:
            result.eval_iterations.append(n_outer)
            result.eval_metric.append(float(evaluate(self.meta_loss)))
        return result

    def _save(self, next_iteration: int, result: MetaTrainResult, reset: bool) -> None:
        shards = self.backend.snapshot()  # also the base from which a replaced worker replays
        if self.checkpoint_path:
            save_checkpoint(self.checkpoint_path, self.identity(), next_iteration, self.meta_loss.state_dict(),
                            self.optimizer.state_dict(), shards, asdict(result), reset)

    def _load(self) -> tuple[MetaTrainResult, int, bool]:
        payload = load_checkpoint(self.checkpoint_path, self.identity())
        self.meta_loss.load_state_dict(payload["meta_loss"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.backend.restore(payload["shards"])
        return MetaTrainResult(**payload["record"]), payload["iteration"], payload["reset"]

    def report(self) -> dict[str, Any]:
        """Workers, restarts, Ray start-up time, bytes per outer step and step times, for results.json."""
        backend = self.backend
        return {"workers": backend.n_workers, "tasks_per_step": self.spec.n_tasks, "restarts": backend.restarts,
                "ray_init_s": getattr(backend, "init_s", 0.0), "actors_start_s": getattr(backend, "actors_s", 0.0),
                **backend.traffic(), **self.times.summary()}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "DistributedMetaTrainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["DistributedMetaTrainer", "StepTimes"]
