"""What every distributed experiment adds to its single-process one: the settings of the workers, one
:class:`~sb3_ml3.distributed.trainer.DistributedMetaTrainer` per seed, and one Ray session for all seeds.

An experiment becomes distributed by putting :class:`DistributedSeeds` before it in the bases and
overriding its ``meta_train_seed`` hook with a call to :meth:`DistributedSeeds.fit_seed`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from sb3_ml3.distributed.shard import ProblemSpec
from sb3_ml3.distributed.trainer import DistributedMetaTrainer
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import MetaTrainResult


class DistributedSeeds:
    """Mixin of a supervised experiment whose meta-training runs on ``workers`` Ray workers (0: in this process).

    :param tasks_per_step: optimizees per outer step (the paper's loop has one); at least ``workers``.
    :param checkpoint_dir: where each seed's checkpoint ``{name}_seed{seed}.pt`` is written every
        ``checkpoint_every`` outer steps; with ``resume`` a seed continues from its checkpoint.
    """

    #: the experiment's name, the prefix of its checkpoint files
    name: str = "experiment"
    config: Any

    def __init__(self, config: Any = None, tasks_per_step: int = 1, workers: int = 0, address: str | None = None,
                 threads: int = 1, checkpoint_dir: str | None = None, checkpoint_every: int = 25,
                 resume: bool = False) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        if tasks_per_step < max(1, workers):
            raise ValueError(f"{workers} workers need at least as many optimizees per outer step; got "
                             f"--tasks-per-step {tasks_per_step}.")
        self.tasks_per_step, self.workers, self.address, self.threads = tasks_per_step, workers, address, threads
        self.checkpoint_dir, self.checkpoint_every, self.resume = checkpoint_dir, checkpoint_every, resume
        self.reports: dict[int, dict[str, Any]] = {}
        self.ray_init_s = 0.0

    def checkpoint_path(self, seed: int) -> str | None:
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, f"{self.name}_seed{seed}.pt")

    def fit_seed(self, meta_loss: MetaLoss, spec: ProblemSpec, seed: int, evaluate: Callable[..., float] | None,
                 eval_every: int, progress: Callable[[int], None] | None) -> MetaTrainResult:
        """Meta-train ``meta_loss`` on ``spec`` for ``config.n_outer`` outer steps on the workers; keep their report."""
        cfg = self.config
        with DistributedMetaTrainer(meta_loss, spec, cfg.meta_lr, workers=self.workers, address=self.address,
                                    threads=self.threads, max_grad_norm=cfg.max_grad_norm,
                                    checkpoint_path=self.checkpoint_path(seed),
                                    checkpoint_every=self.checkpoint_every) as trainer:
            result = trainer.fit(cfg.n_outer, evaluate=evaluate, eval_every=eval_every, progress=progress,
                                 resume=self.resume)
            self.reports[seed] = trainer.report()
        return result

    def run(self, seeds: Sequence[int], progress: bool = False) -> dict[str, Any]:
        """The experiment's own ``run``, inside one Ray session for all seeds, with the workers' reports."""
        if self.workers == 0:
            results = super().run(seeds, progress=progress)  # type: ignore[misc]
        else:
            from sb3_ml3.distributed.ray_backend import RaySession

            with RaySession(self.workers, self.address) as session:
                self.ray_init_s = session.init_s
                results = super().run(seeds, progress=progress)  # type: ignore[misc]
        for record in results["per_seed"]:
            record["distributed"] = self.reports.get(record["seed"], {})
        results["distributed"] = {"workers": self.workers, "address": self.address,
                                  "tasks_per_step": self.tasks_per_step, "ray_init_s": round(self.ray_init_s, 3),
                                  "checkpoint_every": self.checkpoint_every,
                                  "restarts": sum(r.get("restarts", 0) for r in self.reports.values())}
        return results


def plain(value: Any) -> Any:
    """A tuple as a list, for JSON fingerprints."""
    return list(value) if isinstance(value, tuple) else value


__all__ = ["DistributedSeeds", "plain"]
