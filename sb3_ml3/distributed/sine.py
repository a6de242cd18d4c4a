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
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from sb3_ml3.distributed.shard import ProblemParts, ProblemSpec
from sb3_ml3.distributed.trainer import DistributedMetaTrainer
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
        fingerprint={"experiment": "sine", **{k: _plain(settings[k]) for k in TRAINING_FIELDS}},
    )


class DistributedSineExperiment(SineExperiment):
    """:class:`SineExperiment` whose meta-training runs on ``workers`` Ray workers (0: in this process).

    :param tasks_per_step: optimizees per outer step (the paper's loop has one); at least ``workers``.
    :param checkpoint_dir: where each seed's checkpoint ``sine_seed{seed}.pt`` is written every
        ``checkpoint_every`` outer steps; with ``resume`` a seed continues from its checkpoint.
    """

    def __init__(self, config: SineConfig | None = None, tasks_per_step: int = 1, workers: int = 0,
                 address: str | None = None, threads: int = 1, checkpoint_dir: str | None = None,
                 checkpoint_every: int = 25, resume: bool = False) -> None:
        super().__init__(config)
        if config is not None and config.compile:
            raise ValueError("--compile applies to the single-process loop; the distributed workers run eager "
                             "torch.func (drop --compile or --workers).")
        if tasks_per_step < max(1, workers):
            raise ValueError(f"{workers} workers need at least as many optimizees per outer step; got "
                             f"--tasks-per-step {tasks_per_step}.")
        self.tasks_per_step, self.workers, self.address, self.threads = tasks_per_step, workers, address, threads
        self.checkpoint_dir, self.checkpoint_every, self.resume = checkpoint_dir, checkpoint_every, resume
        self.reports: dict[int, dict[str, Any]] = {}
        self.ray_init_s = 0.0

    def checkpoint_path(self, seed: int) -> str | None:
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, f"sine_seed{seed}.pt")

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
        cfg = self.config
        spec = sine_problem(cfg, seed, self.tasks_per_step, train_batch, train_query)
        with DistributedMetaTrainer(meta_loss, spec, cfg.meta_lr, workers=self.workers, address=self.address,
                                    threads=self.threads, max_grad_norm=cfg.max_grad_norm,
                                    checkpoint_path=self.checkpoint_path(seed),
                                    checkpoint_every=self.checkpoint_every) as trainer:
            result = trainer.fit(cfg.n_outer, evaluate=evaluate, eval_every=cfg.eval_every, progress=progress,
                                 resume=self.resume)
            self.reports[seed] = trainer.report()
        return result

    def run(self, seeds: Sequence[int], progress: bool = False) -> dict[str, Any]:
        if self.workers == 0:
            results = super().run(seeds, progress=progress)
        else:
            from sb3_ml3.distributed.ray_backend import RaySession

            with RaySession(self.workers, self.address) as session:  # one Ray for all seeds
                self.ray_init_s = session.init_s
                results = super().run(seeds, progress=progress)
        for record in results["per_seed"]:
            record["distributed"] = self.reports.get(record["seed"], {})
        results["distributed"] = {"workers": self.workers, "address": self.address,
                                  "tasks_per_step": self.tasks_per_step, "ray_init_s": round(self.ray_init_s, 3),
                                  "checkpoint_every": self.checkpoint_every,
                                  "restarts": sum(r.get("restarts", 0) for r in self.reports.values())}
        return results


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


__all__ = ["DistributedSineExperiment", "build_sine_parts", "sine_problem"]
