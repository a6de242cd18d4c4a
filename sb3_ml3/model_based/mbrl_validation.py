"""Meta-validation for model-based ML3: keep the meta-loss that trains policies best on real train goals.

Meta-training optimises the task loss inside the learned model P after K inner steps; what the loss is used for is
many updates from real rollouts (Algorithm 5). The two can part: on ReacherGoal4D the model's task loss is noisy
from one outer iteration to the next, and a loss good for K steps may lead policies away after more. Every ``every``
outer iterations (and before the first) :class:`KeepBest` meta-tests the current loss as Algorithm 5 does, on a fixed
set of **train-split** goals (``val_goals`` of them) with fixed initial policies (never a held-out goal), scores it by
the mean real final distance over updates 1..``updates`` (fast and good both count), and at the end restores the
best-scoring weights.
The real env steps it takes are counted in the log.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sb3_ml3.model_based.dynamics import RealEnvs

if TYPE_CHECKING:  # pragma: no cover
    from sb3_ml3.model_based.mbrl import MBRLExperiment

#: offset of the validation goals' seed (MBRLExperiment.train_goals): apart from the model data's and the tuning's
VALIDATION_GOALS_OFFSET = 4


class KeepBest:
    """Score the meta-loss every ``every`` outer iterations on train goals; :meth:`finish` restores the best.

    :param experiment: the experiment whose ``meta_loss`` is scored (and restored).
    :param every: outer iterations between scores; 0 turns validation off (the last weights are kept, Alg. 3).
    :param updates: meta-test updates per score.
    """

    def __init__(self, experiment: "MBRLExperiment", every: int, updates: int) -> None:
        if every < 0 or updates < 1:
            raise ValueError(f"need every >= 0 and updates >= 1, got every={every}, updates={updates}.")
        self.experiment, self.every, self.updates = experiment, int(every), int(updates)
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.env_steps = 0

    def score(self) -> float:
        """Mean real final distance over updates 1..``updates`` of fresh policies on the validation goals."""
        exp = self.experiment
        goals = exp.train_goals(exp.config.val_goals or exp.config.n_test_goals, VALIDATION_GOALS_OFFSET)
        theta = exp.initial_policies(len(goals), torch.Generator().manual_seed(exp.seed * 1000 + 11))
        envs = RealEnvs(exp.env.env_id, goals)
        try:
            curve = np.asarray(exp.meta_test_ml3(envs, theta, self.updates)["final_distance"])
        finally:
            envs.close()
        self.env_steps += curve.size * exp.horizon
        value = float(curve[1:].mean())
        return value if np.isfinite(value) else float("inf")

    def __call__(self, outer: int) -> None:
        """Score at outer iteration ``outer`` when it is due (0: the loss before meta-training)."""
        if not self.every or outer % self.every:
            return
        value = self.score()
        self.history.append({"outer": outer, "score": value})
        if self.best is None or value < self.best[0]:
            self.best = (value, outer, copy.deepcopy(self.experiment.meta_loss.state_dict()))

    def finish(self) -> dict[str, Any]:
        """Restore the best weights; the log (scores, the kept iteration, the real env steps spent)."""
        if self.best is None:
            return {}
        self.experiment.meta_loss.load_state_dict(self.best[2])
        return {"scores": self.history, "kept_outer": self.best[1], "kept_score": self.best[0],
                "env_steps": self.env_steps, "goals": "train split", "updates": self.updates}


__all__ = ["KeepBest", "VALIDATION_GOALS_OFFSET"]
