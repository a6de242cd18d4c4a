"""``ml3 digits --workers N``: the digit experiment with its meta-training split across Ray workers.

Each outer step meta-trains ``tasks_per_step`` LeNets on the seed's meta-train pair (its support and
query images are exactly those of ``ml3 digits``), each from its own initialisations theta_0 (drawn from
the generator of its (seed, task), reset every M steps). Meta-validation, the choice of the best loss and
meta-testing are those of :class:`sb3_ml3.supervised.digits.DigitsExperiment`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch.func import functional_call

from sb3_ml3.distributed.shard import ProblemParts, ProblemSpec
from sb3_ml3.distributed.experiments import DistributedSeeds, plain
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import MetaTrainResult, Task, init_params, learned_loss_fn
from sb3_ml3.supervised.digits import (DigitsConfig, DigitsExperiment, cross_entropy, make_meta_loss,
                                       meta_inputs_fn)
from sb3_ml3.supervised.lenet import LeNet

#: the settings that shape meta-training (a checkpoint resumes only a run that shares them)
TRAINING_FIELDS = ("data", "n_per_class", "meta_inputs", "meta_hidden_sizes", "meta_output", "meta_lr")


def build_digits_parts(config: DigitsConfig, image_size: int, support: tuple[torch.Tensor, ...],
                       query: tuple[torch.Tensor, ...]) -> ProblemParts:
    """The digit problem as a worker builds it: LeNet, learned loss on its inputs, cross-entropy task loss."""
    optimizee = LeNet(image_size, n_classes=2)
    template = make_meta_loss(config, torch.Generator().manual_seed(0))  # architecture only

    def task_loss(params: dict, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return cross_entropy(functional_call(optimizee, params, (batch[0],)), batch[1])

    return ProblemParts(
        learned_loss=learned_loss_fn(optimizee, template, meta_inputs_fn(config.meta_inputs)),
        task_loss=task_loss,
        init_params=functools.partial(init_params, optimizee),
        task_data=lambda task_index, generator: (support, query),
    )


class DistributedDigitsExperiment(DistributedSeeds, DigitsExperiment):
    """:class:`DigitsExperiment` whose meta-training runs on ``workers`` Ray workers (0: in this process).

    The arguments are :class:`~sb3_ml3.distributed.experiments.DistributedSeeds`; checkpoints: ``digits_seed{seed}.pt``.
    """

    name = "digits"

    def meta_train_seed(
        self,
        seed: int,
        meta_loss: MetaLoss,
        optimizee: LeNet,
        task_loss: Callable[[dict, tuple[torch.Tensor, ...]], torch.Tensor],
        train_task: Task,
        generator: torch.Generator,
        evaluate: Callable[[MetaLoss], float] | None,
        progress: Callable[[int], None] | None,
    ) -> MetaTrainResult:
        cfg = self.config
        settings = asdict(cfg)
        spec = ProblemSpec(
            build=functools.partial(build_digits_parts, cfg, optimizee.image_size, train_task.support, train_task.query),
            seed=seed, n_tasks=self.tasks_per_step, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
            reset_every=cfg.reset_every, first_order=cfg.first_order,
            fingerprint={"experiment": "digits", **{k: plain(settings[k]) for k in TRAINING_FIELDS}},
        )
        return self.fit_seed(meta_loss, spec, seed, evaluate, cfg.eval_every if evaluate else 0, progress)


__all__ = ["DistributedDigitsExperiment", "build_digits_parts"]
