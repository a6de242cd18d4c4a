"""Callbacks that change a run's update schedule mid-run, for controls beside a learned loss.

:class:`PullSwitch` ends a target loss's pull at a hand-set time (a learned pull horizon's control);
:class:`WarmLearningRate` gives SB3's PPO the step sizes a target loss's ``pull_learning_rate`` gives ML3 (the same
schedule without the learned target).
"""

from __future__ import annotations

import torch
from stable_baselines3.common.callbacks import BaseCallback


class PullSwitch(BaseCallback):
    """Turns the model's target-loss pull off (w = softplus(-30) ~ 1e-13, so M = PPO's surrogate, and the inner step
    back to ML3's own learning rate) from the first rollout that ends at or after ``steps`` env steps: a hand-set
    schedule to compare a learned one with."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def _on_training_start(self) -> None:
        if self.model.meta_loss.correction != "target":
            raise ValueError(f"PullSwitch (--pull-until) needs a target-correction loss, not "
                             f"{self.model.meta_loss.correction!r}.")

    def _on_rollout_end(self) -> None:  # before the update of this rollout
        if self.num_timesteps >= self.steps:
            with torch.no_grad():
                self.model.meta_loss.net[-1].weight[0].zero_()
                self.model.meta_loss.net[-1].bias[0] = -30.0
            self.model.meta_loss.pull_learning_rate = None

    def _on_step(self) -> bool:
        return True


class WarmLearningRate(BaseCallback):
    """PPO's first ``updates`` updates at step size ``rate``, then its own schedule: the control for a target loss's
    ``pull_learning_rate`` (the same step sizes, no learned target)."""

    def __init__(self, rate: float, updates: int) -> None:
        super().__init__()
        if not (isinstance(rate, (int, float)) and 0 < rate < float("inf")) or not (
                isinstance(updates, int) and not isinstance(updates, bool) and updates >= 1):
            raise ValueError(f"WarmLearningRate needs a positive finite step size and a count >= 1, got {rate!r}, "
                             f"{updates!r}.")
        self.rate, self.updates, self.rollouts = float(rate), updates, 0

    def _on_training_start(self) -> None:
        schedule = self.model.lr_schedule
        self.model.lr_schedule = lambda progress: self.rate if self.rollouts <= self.updates else schedule(progress)

    def _on_rollout_end(self) -> None:  # before the update of this rollout reads the schedule
        self.rollouts += 1

    def _on_step(self) -> bool:
        return True
