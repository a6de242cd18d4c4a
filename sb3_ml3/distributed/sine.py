"""``ml3 sine --workers N``: the sine experiment with its meta-training split across Ray workers.

Each outer step meta-trains on ``tasks_per_step`` optimizees of the paper's meta-train task
y = sin(x - pi) (its 100 support and 100 query points are the seed's, exactly as in ``ml3 sine``); each
optimizee has its own initialisations theta_0, drawn from the generator of its (seed, task) and reset
every M steps. The workers own the optimizees; the driver averages their meta-gradients and steps phi
with the same Adam. Meta-testing (Alg. 2) and the result files are those of
:class:`sb3_ml3.supervised.sine.SineExperiment`: only where meta-training runs differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from sb3_ml3.distributed.shard import ProblemParts, ProblemSpec
from sb3_ml3.distributed.experiments import DistributedSeeds, plain
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import MetaTrainResult, init_params, learned_loss_fn, task_loss_fn
from sb3_ml3.supervised.sine import SineConfig, SineExperiment, make_meta_loss, make_optimizee

#: the settings that shape meta-training (a checkpoint resumes only a run that shares them)
TRAINING_FIELDS = ("hidden_sizes", "meta_hidden_sizes", "meta_output", "train_amplitude", "train_phase", "n_points",
                   "input_range", "evaluate_on")


def build_sine_parts(config: SineConfig, batch: tuple[torch.Tensor, torch.Tensor],
                     query: tuple[torch.Tensor, torch.Tensor]) -> ProblemParts:
    """The sine problem as a worker builds it: MLP optimizee, learned loss, MSE task loss, the seed's task data."""
    optimizee = make_optimizee(config.hidden_sizes)
    template = make_meta_loss(config, torch.Generator().manual_seed(0))  # architecture only: phi comes from the driver
    return ProblemParts(
        learned_loss=learned_loss_fn(optimizee, template),
        task_loss=task_loss_fn(optimizee),
        init_params=functools.partial(init_params, optimizee),
        task_data=lambda task_index, generator: (batch, query),
    )


def sine_problem(config: SineConfig, seed: int, tasks_per_step: int, batch: tuple[torch.Tensor, torch.Tensor],
                 query: tuple[torch.Tensor, torch.Tensor]) -> ProblemSpec:
    """The :class:`ProblemSpec` of one seed of the sine experiment with ``tasks_per_step`` optimizees per step."""
    settings = asdict(config)
    return ProblemSpec(
        build=functools.partial(build_sine_parts, config, batch, query),
        seed=seed,
        n_tasks=tasks_per_step,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        reset_every=config.reset_every,
        first_order=config.first_order,
        fingerprint={"experiment": "sine", **{k: plain(settings[k]) for k in TRAINING_FIELDS}},
    )


class DistributedSineExperiment(DistributedSeeds, SineExperiment):
    """:class:`SineExperiment` whose meta-training runs on ``workers`` Ray workers (0: in this process); the
    arguments are :class:`~sb3_ml3.distributed.experiments.DistributedSeeds`. Checkpoints: ``sine_seed{seed}.pt``."""

    name = "sine"

    def __init__(self, config: SineConfig | None = None, **kwargs: Any) -> None:
        if config is not None and config.compile:
            raise ValueError("--compile applies to the single-process loop; the distributed workers run eager "
                             "torch.func (drop --compile or --workers).")
        super().__init__(config, **kwargs)

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
        spec = sine_problem(self.config, seed, self.tasks_per_step, train_batch, train_query)
        return self.fit_seed(meta_loss, spec, seed, evaluate, self.config.eval_every, progress)


__all__ = ["DistributedSineExperiment", "build_sine_parts", "sine_problem"]
