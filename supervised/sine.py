"""Sine regression with a learned loss (paper Sec. IV.A.1, Fig. 2 top, Appendix A).

Meta-train on one task y = sin(x - pi), x ~ U[-2, 2], 100 points; meta-test on 10 tasks
y = A sin(x - w), A ~ U[0.2, 5], w ~ U[-pi, pi], 100 points each. The optimizee is an MLP with two
hidden layers of 40; alpha = eta = 0.001; 100 gradient steps at meta-test. Each seed sets the
optimizee initialisations, the meta-loss initialisation and the tasks.

The task loss is measured on held-out query points of each task by default (``evaluate_on="query"``);
the paper's code measured it on the training points (``evaluate_on="support"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sb3_ml3.atomic import jsonable
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import (
    MetaTrainResult,
    RegressionTask,
    init_params,
    learned_loss_fn,
    meta_test,
    meta_train,
    run_seeds,
    stack_params,
    task_loss_fn,
)


@dataclass
class SineConfig:
    """Settings of the sine experiment; the defaults are the paper's (Appendix A)."""

    n_outer: int = 1000  # outer (meta-train) iterations
    inner_lr: float = 1e-3  # alpha
    meta_lr: float = 1e-3  # eta
    test_steps: int = 100  # gradient steps at meta-test
    n_test_tasks: int = 10
    n_points: int = 100  # support points per task (and as many held-out query points)
    hidden_sizes: tuple[int, ...] = (40, 40)  # optimizee
    meta_hidden_sizes: tuple[int, ...] = (40, 40)  # meta-loss (Sec. IV.A)
    meta_output: str = "softplus"
    train_amplitude: float = 1.0
    train_phase: float = math.pi
    amplitude_range: tuple[float, float] = (0.2, 5.0)
    phase_range: tuple[float, float] = (-math.pi, math.pi)
    input_range: tuple[float, float] = (-2.0, 2.0)
    test_input_range: tuple[float, float] = (-2.0, 2.0)
    evaluate_on: str = "query"
    inner_steps: int = 1  # K unrolled inner steps per outer step
    # M: inner steps before theta is re-initialised. Matching the meta-test horizon (100 steps) lets the
    # loss see optimizees at every stage of training; M = 1 (the paper's code) only ever sees fresh ones
    # and gave 0.87x instead of 0.34x on 5 seeds (see BENCHMARKS.md).
    reset_every: int = 100
    first_order: bool = False
    max_grad_norm: float | None = None
    eval_every: int = 25  # meta-train curve resolution (Fig. 2c)
    # torch.compile the outer step (silently eager where compiling fails); None: when n_outer >= 1000
    # (core.AUTO_COMPILE_MIN_OUTER), i.e. for the paper's run, where the one-off compile pays; False: eager.
    compile: bool | None = None

    def __post_init__(self) -> None:
        if self.evaluate_on not in ("query", "support"):
            raise ValueError(f"evaluate_on must be 'query' or 'support', got {self.evaluate_on!r}.")
        for name in ("input_range", "test_input_range", "amplitude_range", "phase_range"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}.")
        if self.n_points < 1 or self.n_test_tasks < 1 or self.test_steps < 0:
            raise ValueError("n_points and n_test_tasks must be positive and test_steps non-negative.")


def make_optimizee(hidden_sizes: Sequence[int] = (40, 40)) -> nn.Module:
    """The regressor f_theta: an MLP 1 -> hidden -> 1 with ReLU."""
    layers: list[nn.Module] = []
    width = 1
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def make_meta_loss(config: SineConfig, generator: torch.Generator) -> MetaLoss:
    meta_loss = MetaLoss(
        "y_pred:1, y_target:1",
        hidden_sizes=config.meta_hidden_sizes,
        output=config.meta_output,
        metadata={"experiment": "sine", "config": jsonable(asdict(config))},
    )
    meta_loss.reset_parameters(generator)
    return meta_loss


def sine_task(
    amplitude: float,
    phase: float,
    n_points: int,
    input_range: tuple[float, float],
    generator: torch.Generator,
) -> RegressionTask:
    """y = A sin(x - w) with x ~ U[input_range]: ``n_points`` support and ``n_points`` query points."""
    lo, hi = input_range
    x = torch.rand(2, n_points, 1, generator=generator) * (hi - lo) + lo
    y = amplitude * torch.sin(x - phase)
    return RegressionTask(x[0], y[0], x[1], y[1])


def sample_test_tasks(config: SineConfig, generator: torch.Generator) -> tuple[list[RegressionTask], list[tuple[float, float]]]:
    """The meta-test tasks: A ~ U[amplitude_range], w ~ U[phase_range]."""
    tasks, descriptors = [], []
    for _ in range(config.n_test_tasks):
        a_lo, a_hi = config.amplitude_range
        w_lo, w_hi = config.phase_range
        amplitude = float(torch.rand((), generator=generator)) * (a_hi - a_lo) + a_lo
        phase = float(torch.rand((), generator=generator)) * (w_hi - w_lo) + w_lo
        tasks.append(sine_task(amplitude, phase, config.n_points, config.test_input_range, generator))
        descriptors.append((amplitude, phase))
    return tasks, descriptors


class SineExperiment:
    """Runs the sine experiment for several seeds with shared optimizee/meta-loss templates.

    The templates are only architectures for :func:`torch.func.functional_call`; sharing them lets a
    compiled outer step be reused across seeds.
    """

    def __init__(self, config: SineConfig | None = None) -> None:
        self.config = config or SineConfig()
        self.optimizee = make_optimizee(self.config.hidden_sizes)
        self.meta_template = make_meta_loss(self.config, torch.Generator().manual_seed(0))
        self.learned_loss = learned_loss_fn(self.optimizee, self.meta_template)
        self.task_loss = task_loss_fn(self.optimizee)

    def run_seed(self, seed: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        cfg = self.config
        generator = torch.Generator().manual_seed(seed)
        meta_loss = make_meta_loss(cfg, generator)
        train_task = sine_task(cfg.train_amplitude, cfg.train_phase, cfg.n_points, cfg.input_range, generator)
        test_tasks, descriptors = sample_test_tasks(cfg, generator)
        test_inits = stack_params([init_params(self.optimizee, generator) for _ in test_tasks])
        eval_init = stack_params([init_params(self.optimizee, generator)])
        train_query = train_task.x_query, train_task.y_query
        if cfg.evaluate_on == "support":
            train_query = train_task.x_support, train_task.y_support
        train_batch = train_task.x_support, train_task.y_support

        def evaluate(loss: MetaLoss | None) -> float:
            trace = meta_test(self.optimizee, loss, [train_task], eval_init, cfg.inner_lr, cfg.test_steps,
                              evaluate_on=cfg.evaluate_on)
            return float(trace[0, -1])

        train_result = self.meta_train_seed(seed, meta_loss, generator, train_batch, train_query, evaluate, progress)
        ml3_trace = meta_test(self.optimizee, meta_loss, test_tasks, test_inits, cfg.inner_lr, cfg.test_steps,
                              evaluate_on=cfg.evaluate_on)
        mse_trace = meta_test(self.optimizee, None, test_tasks, test_inits, cfg.inner_lr, cfg.test_steps,
                              evaluate_on=cfg.evaluate_on)
        return {
            "seed": seed,
            "final_mse_ml3": float(ml3_trace[:, -1].mean()),
            "final_mse_task_loss": float(mse_trace[:, -1].mean()),
            "test_trace_ml3": ml3_trace.mean(0).tolist(),
            "test_trace_task_loss": mse_trace.mean(0).tolist(),
            "test_final_per_task_ml3": ml3_trace[:, -1].tolist(),
            "test_final_per_task_task_loss": mse_trace[:, -1].tolist(),
            "test_tasks": [{"amplitude": a, "phase": w} for a, w in descriptors],
            "meta_train_iterations": train_result.eval_iterations,
            "meta_train_metric_ml3": train_result.eval_metric,
            "meta_train_metric_task_loss": evaluate(None),
            "meta_train_task_loss": train_result.task_loss,
            "skipped_meta_steps": train_result.skipped_steps,
            "skipped_reasons": train_result.skipped_reasons[:20],
            "meta_loss": meta_loss,
        }

    def meta_train_seed(
        self,
        seed: int,
        meta_loss: MetaLoss,
        generator: torch.Generator,
        train_batch: tuple[torch.Tensor, torch.Tensor],
        train_query: tuple[torch.Tensor, torch.Tensor],
        evaluate: Callable[[MetaLoss | None], float],
        progress: Callable[[int], None] | None,
    ) -> MetaTrainResult:
        """Algorithm 1 for one seed on the meta-train task, in this process (``sb3_ml3.distributed`` overrides it)."""
        cfg = self.config
        return meta_train(
            meta_loss,
            self.learned_loss,
            self.task_loss,
            init_fn=lambda g: init_params(self.optimizee, g),
            task_fn=lambda _: (train_batch, train_query),
            n_outer=cfg.n_outer,
            inner_lr=cfg.inner_lr,
            meta_lr=cfg.meta_lr,
            generator=generator,
            inner_steps=cfg.inner_steps,
            reset_every=cfg.reset_every,
            first_order=cfg.first_order,
            max_grad_norm=cfg.max_grad_norm,
            compile=cfg.compile,
            evaluate=evaluate,
            eval_every=cfg.eval_every,
            progress=progress,
        )

    def run(self, seeds: Sequence[int], progress: bool = False) -> dict[str, Any]:
        """All seeds; returns a JSON-ready dict (the meta-losses stay under ``"meta_losses"``).

        Ctrl-C (``KeyboardInterrupt``) during a seed keeps the seeds finished before it: the result
        then has ``"partial": True`` and ``"interrupted_at_seed"``; with no seed finished it re-raises.
        """
        per_seed, interrupted_at = run_seeds(seeds, lambda seed, bar: self.run_seed(seed, progress=bar),
                                             self.config.n_outer, "ml3 sine: meta-train", progress)
        meta_losses = {r["seed"]: r.pop("meta_loss") for r in per_seed}
        ml3 = torch.tensor([r["final_mse_ml3"] for r in per_seed])
        base = torch.tensor([r["final_mse_task_loss"] for r in per_seed])
        summary = {
            "seeds": [r["seed"] for r in per_seed],
            "mean_final_mse_ml3": float(ml3.mean()),
            "mean_final_mse_task_loss": float(base.mean()),
            "ratio_ml3_over_task_loss": float(ml3.mean() / base.mean()),
            "skipped_meta_steps": int(sum(r["skipped_meta_steps"] for r in per_seed)),
        }
        results = {"experiment": "sine", "config": jsonable(asdict(self.config)), "summary": summary,
                   "per_seed": per_seed, "meta_losses": meta_losses, "partial": interrupted_at is not None}
        if interrupted_at is not None:
            results["interrupted_at_seed"] = int(interrupted_at)
            results["requested_seeds"] = list(seeds)
        return results


def run_sine(seeds: Sequence[int] = (0, 1, 2, 3, 4), config: SineConfig | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the sine experiment (see :class:`SineExperiment`)."""
    return SineExperiment(config).run(seeds, progress=progress)


__all__ = ["SineConfig", "SineExperiment", "run_sine", "sine_task", "sample_test_tasks", "make_optimizee"]
