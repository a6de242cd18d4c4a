"""Binary digit classification with a learned loss (paper Sec. IV.A.1, Fig. 2 bottom): ``ml3 digits``.

A task is a pair of digit classes (a, b), a labelled 0 and b labelled 1. Each seed draws five distinct
pairs: the loss is meta-trained on the first with cross-entropy as the task loss L_T, and meta-tested
on the other four, beside SGD on cross-entropy from the same initial optimizees at the same step size.
The optimizee is a LeNet (:mod:`sb3_ml3.supervised.lenet`); the meta-loss M_phi sees the optimizee's
prediction (its log-probabilities by default, or its logits) and the one-hot label.

Data (:mod:`sb3_ml3.supervised.datasets`): scikit-learn's bundled 8x8 digits by default (LeNet with 3x3
kernels), or MNIST's 28x28 IDX files (LeNet-5). A meta-test task trains on ``n_per_class`` images of each
class from the train split and is measured on as many held-out images from the test split; the
meta-train task draws both its support and its query images from the train split, so the test split
is only ever seen at meta-test.

Meta-validation: every ``eval_every`` outer iterations the current loss trains fresh optimizees on the
meta-train pair for ``test_steps`` steps and their error on its query images is recorded (Fig. 2c);
the loss that scored best is the one meta-tested (``keep_best``). No meta-test pair is involved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.func import functional_call

from sb3_ml3.atomic import jsonable
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import (BestMetaLoss, MetaTrainResult, Task, init_params, learned_loss_fn, meta_test, meta_train,
                                     run_seeds, stack_params)
from sb3_ml3.supervised.datasets import DATASETS, DigitImages, load_images
from sb3_ml3.supervised.lenet import LeNet

#: what the meta-loss sees of the prediction: the logits, or the log-probabilities log_softmax(logits)
META_INPUTS = ("log_probs", "logits")


@dataclass
class DigitsConfig:
    """Settings of the digit experiment; alpha = eta = 0.001 and 100 test steps are the paper's."""

    data: str = "digits"  # "digits" (bundled 8x8) or "mnist" (IDX files in data_dir)
    data_dir: str | None = None
    n_outer: int = 4000  # outer (meta-train) iterations (1000 left the loss still near its start, see REPORT.md)
    inner_lr: float = 1e-3  # alpha, also the meta-test step size of both ML3 and SGD on cross-entropy
    meta_lr: float = 1e-3  # eta
    test_steps: int = 100  # gradient steps at meta-test
    n_test_tasks: int = 4  # held-out pairs
    n_per_class: int = 40  # support images per class of a task (and as many query images)
    meta_inputs: str = "log_probs"
    meta_hidden_sizes: tuple[int, ...] = (40, 40)  # Sec. IV.A
    meta_output: str = "softplus"
    inner_steps: int = 1  # K unrolled inner steps per outer step
    # M: inner steps before theta is re-initialised; matching the meta-test horizon lets the loss see
    # optimizees at every stage of their training (as in the sine experiment)
    reset_every: int = 100
    first_order: bool = False
    max_grad_norm: float | None = None
    eval_every: int = 200  # meta-validation interval (Fig. 2c); 0: none
    keep_best: bool = True  # meta-test the loss that did best at meta-validation

    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"Unknown data set {self.data!r}; choose one of {list(DATASETS)}.")
        if self.meta_inputs not in META_INPUTS:
            raise ValueError(f"meta_inputs must be one of {list(META_INPUTS)}, got {self.meta_inputs!r}.")
        if not 1 <= self.n_test_tasks <= 44:
            raise ValueError(f"n_test_tasks must lie in [1, 44] (45 digit pairs, one for meta-training), "
                             f"got {self.n_test_tasks}.")
        if self.n_per_class < 1 or self.test_steps < 0 or self.n_outer < 0:
            raise ValueError("n_per_class must be positive, test_steps and n_outer non-negative.")
        if self.keep_best and not self.eval_every:
            raise ValueError("keep_best needs meta-validation: set eval_every > 0 or keep_best=False.")


# ---------------------------------------------------------------------------------------------- losses
def cross_entropy(logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """The task loss L_T: mean cross-entropy of the logits against one-hot labels."""
    return -(one_hot * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def error_rate(logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """The fraction of images whose most likely class is not the label."""
    return (logits.argmax(-1) != one_hot.argmax(-1)).to(logits.dtype).mean()


def log_probs_and_label(prediction: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The meta-loss inputs (log_softmax(f_theta(x)), one-hot y)."""
    return torch.log_softmax(prediction, dim=-1), batch[1]


def logits_and_label(prediction: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The meta-loss inputs (f_theta(x), one-hot y)."""
    return prediction, batch[1]


def meta_inputs_fn(name: str) -> Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    return {"log_probs": log_probs_and_label, "logits": logits_and_label}[name]


def make_meta_loss(config: DigitsConfig, generator: torch.Generator) -> MetaLoss:
    meta_loss = MetaLoss(
        f"{config.meta_inputs}:2, label:2",
        hidden_sizes=config.meta_hidden_sizes,
        output=config.meta_output,
        metadata={"experiment": "digits", "config": jsonable(asdict(config))},
    )
    meta_loss.reset_parameters(generator)
    return meta_loss


# ---------------------------------------------------------------------------------------------- tasks
def sample_pairs(n_pairs: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``n_pairs`` distinct unordered digit pairs in random order, each as (class 0, class 1) in random order."""
    all_pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    if not 1 <= n_pairs <= len(all_pairs):
        raise ValueError(f"Can draw 1 to {len(all_pairs)} distinct digit pairs, asked for {n_pairs}.")
    order = torch.randperm(len(all_pairs), generator=generator)[:n_pairs]
    flips = torch.rand(n_pairs, generator=generator) < 0.5
    return [all_pairs[i][::-1] if flip else all_pairs[i] for i, flip in zip(order.tolist(), flips.tolist())]


def _pick(labels: torch.Tensor, digit: int, count: int, generator: torch.Generator, what: str) -> torch.Tensor:
    idx = torch.nonzero(labels == digit).flatten()
    if len(idx) < count:
        raise ValueError(f"{what} has {len(idx)} images of digit {digit}, fewer than the {count} asked for: "
                         "lower --n-per-class.")
    return idx[torch.randperm(len(idx), generator=generator)[:count]]


def pair_batch(images: torch.Tensor, labels: torch.Tensor, indices: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(x, one-hot y) of the images at ``indices[c]`` labelled c."""
    x = torch.cat([images[i] for i in indices])
    y = torch.cat([torch.full((len(i),), c, dtype=torch.long) for c, i in enumerate(indices)])
    return x, torch.nn.functional.one_hot(y, len(indices)).to(x.dtype)


def pair_task(data: DigitImages, pair: tuple[int, int], n_per_class: int, generator: torch.Generator,
              query_split: str = "test") -> Task:
    """A binary task: ``n_per_class`` train-split images of each digit of ``pair`` to train on, as many
    held-out images to measure on (from the test split, or from the rest of the train split)."""
    if query_split == "train":  # disjoint support and query from the train split (the meta-train task)
        both = [_pick(data.train_labels, d, 2 * n_per_class, generator, f"{data.name} train split") for d in pair]
        support = pair_batch(data.train_images, data.train_labels, [i[:n_per_class] for i in both])
        query = pair_batch(data.train_images, data.train_labels, [i[n_per_class:] for i in both])
        return Task(support, query)
    support_idx = [_pick(data.train_labels, d, n_per_class, generator, f"{data.name} train split") for d in pair]
    query_idx = [_pick(data.test_labels, d, n_per_class, generator, f"{data.name} test split") for d in pair]
    return Task(pair_batch(data.train_images, data.train_labels, support_idx),
                pair_batch(data.test_images, data.test_labels, query_idx))


# ---------------------------------------------------------------------------------------------- experiment
class DigitsExperiment:
    """Runs the digit experiment for several seeds with one LeNet template (see the module docstring).

    Each seed sets the train/test split of the bundled digits, the five pairs, the images of each task,
    the meta-loss initialisation and every optimizee initialisation.
    """

    def __init__(self, config: DigitsConfig | None = None, data: DigitImages | None = None) -> None:
        self.config = config or DigitsConfig()
        self._data = data
        self._data_seed: int | None = None
        self.optimizee: LeNet | None = None

    def data_for_seed(self, seed: int) -> DigitImages:
        """The images: MNIST (or given data) once; the bundled digits split anew under each seed."""
        cfg = self.config
        if self._data is None or (cfg.data == "digits" and self._data_seed != seed):
            self._data = load_images(cfg.data, torch.Generator().manual_seed(10_000 + seed), cfg.data_dir)
            self._data_seed = seed
        return self._data

    def _metrics(self, optimizee: LeNet) -> Callable[[dict, tuple[torch.Tensor, ...]], torch.Tensor]:
        def metrics(params: dict, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            logits = functional_call(optimizee, params, (batch[0],))
            return torch.stack([error_rate(logits, batch[1]), cross_entropy(logits, batch[1])])

        return metrics

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
        """Algorithm 1 for one seed on the meta-train pair, in this process (``sb3_ml3.distributed`` overrides it)."""
        cfg = self.config
        return meta_train(
            meta_loss,
            learned_loss_fn(optimizee, meta_loss, meta_inputs_fn(cfg.meta_inputs)),
            task_loss,
            init_fn=lambda g: init_params(optimizee, g),
            task_fn=lambda _: (train_task.support, train_task.query),
            n_outer=cfg.n_outer,
            inner_lr=cfg.inner_lr,
            meta_lr=cfg.meta_lr,
            generator=generator,
            inner_steps=cfg.inner_steps,
            reset_every=cfg.reset_every,
            first_order=cfg.first_order,
            max_grad_norm=cfg.max_grad_norm,
            evaluate=evaluate,
            eval_every=cfg.eval_every,
            progress=progress,
        )

    def run_seed(self, seed: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        cfg = self.config
        data = self.data_for_seed(seed)
        if self.optimizee is None or self.optimizee.image_size != data.image_size:
            self.optimizee = LeNet(data.image_size, n_classes=2)
        optimizee = self.optimizee
        generator = torch.Generator().manual_seed(seed)
        meta_loss = make_meta_loss(cfg, generator)
        pairs = sample_pairs(1 + cfg.n_test_tasks, generator)
        train_task = pair_task(data, pairs[0], cfg.n_per_class, generator, query_split="train")
        test_tasks = [pair_task(data, p, cfg.n_per_class, generator) for p in pairs[1:]]
        test_inits = stack_params([init_params(optimizee, generator) for _ in test_tasks])
        eval_inits = stack_params([init_params(optimizee, generator) for _ in range(2)])
        inputs = meta_inputs_fn(cfg.meta_inputs)
        metrics = self._metrics(optimizee)

        def task_loss(params: dict, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return cross_entropy(functional_call(optimizee, params, (batch[0],)), batch[1])

        def trace(loss: MetaLoss | None, tasks: Sequence[Task], inits: dict) -> torch.Tensor:
            """(n_tasks, steps + 1, [error, cross-entropy]) on the tasks' query images."""
            return meta_test(optimizee, loss, tasks, inits, cfg.inner_lr, cfg.test_steps, inputs=inputs,
                             metric_fn=metrics, train_loss_fn=task_loss)

        best = BestMetaLoss()

        def evaluate(loss: MetaLoss) -> float:
            return best.offer(loss, float(trace(loss, [train_task, train_task], eval_inits)[:, -1, 0].mean()))

        train_result = self.meta_train_seed(seed, meta_loss, optimizee, task_loss, train_task, generator,
                                            evaluate if cfg.eval_every else None, progress)
        if cfg.keep_best:
            best.restore(meta_loss)
        ml3 = trace(meta_loss, test_tasks, test_inits)
        base = trace(None, test_tasks, test_inits)
        train_base = trace(None, [train_task, train_task], eval_inits)[:, -1, 0].mean()
        return {
            "seed": seed,
            "meta_train_pair": list(pairs[0]),
            "test_pairs": [list(p) for p in pairs[1:]],
            "final_error_ml3": float(ml3[:, -1, 0].mean()),
            "final_error_task_loss": float(base[:, -1, 0].mean()),
            "final_ce_ml3": float(ml3[:, -1, 1].mean()),
            "final_ce_task_loss": float(base[:, -1, 1].mean()),
            "test_error_trace_ml3": ml3[:, :, 0].mean(0).tolist(),
            "test_error_trace_task_loss": base[:, :, 0].mean(0).tolist(),
            "test_ce_trace_ml3": ml3[:, :, 1].mean(0).tolist(),
            "test_ce_trace_task_loss": base[:, :, 1].mean(0).tolist(),
            "test_final_error_per_task_ml3": ml3[:, -1, 0].tolist(),
            "test_final_error_per_task_task_loss": base[:, -1, 0].tolist(),
            "meta_train_iterations": train_result.eval_iterations,
            "meta_train_error_ml3": train_result.eval_metric,
            "meta_train_error_task_loss": float(train_base),
            "meta_tested_iteration": best.iteration(train_result.eval_iterations) if cfg.keep_best else cfg.n_outer,
            "meta_train_task_loss": train_result.task_loss,
            "skipped_meta_steps": train_result.skipped_steps,
            "skipped_reasons": train_result.skipped_reasons[:20],
            "meta_loss": meta_loss,
        }

    def run(self, seeds: Sequence[int], progress: bool = False) -> dict[str, Any]:
        """All seeds; returns a JSON-ready dict (the meta-losses stay under ``"meta_losses"``).

        Ctrl-C (``KeyboardInterrupt``) during a seed keeps the seeds finished before it: the result then
        has ``"partial": True`` and ``"interrupted_at_seed"``; with no seed finished it re-raises.
        """
        per_seed, interrupted_at = run_seeds(seeds, lambda seed, bar: self.run_seed(seed, progress=bar),
                                             self.config.n_outer, f"ml3 digits ({self.config.data}): meta-train", progress)
        meta_losses = {r["seed"]: r.pop("meta_loss") for r in per_seed}
        ml3 = torch.tensor([r["final_error_ml3"] for r in per_seed])
        base = torch.tensor([r["final_error_task_loss"] for r in per_seed])
        summary = {
            "seeds": [r["seed"] for r in per_seed],
            "mean_final_error_ml3": float(ml3.mean()),
            "mean_final_error_task_loss": float(base.mean()),
            "ratio_ml3_over_task_loss": float(ml3.mean() / base.mean()) if float(base.mean()) > 0 else float("nan"),
            "mean_final_ce_ml3": float(torch.tensor([r["final_ce_ml3"] for r in per_seed]).mean()),
            "mean_final_ce_task_loss": float(torch.tensor([r["final_ce_task_loss"] for r in per_seed]).mean()),
            "skipped_meta_steps": int(sum(r["skipped_meta_steps"] for r in per_seed)),
        }
        results = {"experiment": "digits", "config": jsonable(asdict(self.config)), "summary": summary,
                   "per_seed": per_seed, "meta_losses": meta_losses, "partial": interrupted_at is not None}
        if interrupted_at is not None:
            results["interrupted_at_seed"] = int(interrupted_at)
            results["requested_seeds"] = list(seeds)
        return results


def run_digits(seeds: Sequence[int] = (0, 1, 2, 3, 4), config: DigitsConfig | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Run the digit experiment (see :class:`DigitsExperiment`)."""
    return DigitsExperiment(config).run(seeds, progress=progress)


__all__ = [
    "META_INPUTS",
    "DigitsConfig",
    "DigitsExperiment",
    "cross_entropy",
    "error_rate",
    "make_meta_loss",
    "pair_task",
    "run_digits",
    "sample_pairs",
]
