"""One run of a comparison: its envs, the shared initial policy, the model, and the metric callback.

Every algorithm of a comparison gets the same env and held-out goals, the same seeds and sample
budget, and the **same initial policy per seed**: one ``ActorCriticPolicy`` is built from the
seed and its weights are loaded into every algorithm's policy (``ML3Policy`` subclasses
``ActorCriticPolicy``, so the parameter names match). Observation and reward normalisation
belong to each algorithm's recipe (``normalize``): PPO and TRPO run as rl-zoo3 runs them on
MuJoCo tasks, ML3 feeds its loss what it saw in meta-training.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_ml3.evaluation import evaluate_task_metric
from sb3_ml3.experiments.settings import ALGOS, arch_key, normalize_kwargs, policy_kwargs_for
from sb3_ml3.meta_loss import MetaLoss

#: the held-out tasks are sample_tasks(env_id, n_tasks, "test", seed=TASK_SEED): the same for every seed
#: and algorithm (METRICS.md: "mean over 10 held-out tasks"), so curves of different seeds average.
TASK_SEED = 1000
#: evaluation episode seeds: goal i starts from seed EVAL_SEED + i, for every algorithm and reference
EVAL_SEED = 12345
#: keys of a recipe section that configure the run rather than the algorithm's constructor
RUN_KEYS = ("n_envs", "normalize")


def evaluation_schedule(total_timesteps: int, eval_every: int, dense_until: int = 0,
                        dense_every: int | None = None) -> list[int]:
    """Env steps at which every algorithm is evaluated: 0, eval_every, 2 eval_every, ..., total.

    With ``dense_until`` and ``dense_every``, the first ``dense_until`` steps are evaluated every
    ``dense_every`` steps instead: long budgets keep a fine grid where the fast learner crosses its
    thresholds (METRICS.md: neither crossing may be set by the grid).
    """
    if total_timesteps < 1 or eval_every < 1:
        raise ValueError(f"total_timesteps and eval_every must be positive, got {total_timesteps} and {eval_every}.")
    steps = set(range(0, total_timesteps + 1, eval_every))
    if dense_until > 0:
        if dense_every is None or dense_every < 1:
            raise ValueError(f"eval_dense_every must be positive with eval_dense_until, got {dense_every}.")
        steps |= set(range(0, min(dense_until, total_timesteps) + 1, dense_every))
    steps = sorted(steps)
    if steps[-1] != total_timesteps:
        steps.append(total_timesteps)
    if len(steps) < 4:
        raise ValueError(
            f"The schedule {steps} has fewer than 4 points: the final metric is the mean of the last 3 evaluations "
            "and m_0 is the first. Lower eval_every."
        )
    return steps


class TaskMetricCallback(BaseCallback):
    """Evaluates the task metric at every scheduled env step (step 0 before any update).

    At the first env step ``num_timesteps >= s`` of a scheduled step ``s`` the acting policy is
    evaluated on ``goals``; it has been trained on at most ``s`` samples. Scheduled steps that training
    never reaches are evaluated with the final policy by :meth:`finish`.

    With ``stop_when_frozen``, a model whose policy can no longer change (an ML3 meta-test past its
    ``max_policy_updates``, with no observation statistics still updating) stops training there: every
    later scheduled value would be the same deterministic evaluation of the same policy, so it is
    filled in from one evaluation (``stopped_at``: the env step it stopped at).
    """

    def __init__(self, env_id: str, goals: np.ndarray, schedule: Sequence[int], eval_seed: int = EVAL_SEED,
                 env_kwargs: dict[str, Any] | None = None, on_eval: Callable[[int, float], None] | None = None,
                 stop_when_frozen: bool = False) -> None:
        super().__init__()
        self.stop_when_frozen = stop_when_frozen
        self.stopped_at: int | None = None
        self.env_id = env_id
        self.goals = np.asarray(goals)
        self.schedule = list(schedule)
        self.eval_seed = eval_seed
        self.env_kwargs = dict(env_kwargs or {})
        self.on_eval = on_eval
        self.values: list[np.ndarray] = []  # one (n_goals,) array per scheduled step

    def _evaluate_due(self, now: int) -> None:
        values = None
        while len(self.values) < len(self.schedule) and now >= self.schedule[len(self.values)]:
            if values is None:
                values = evaluate_task_metric(self.model, self.env_id, self.goals, seed=self.eval_seed,
                                              env_kwargs=self.env_kwargs,
                                              vec_normalize=self.model.get_vec_normalize_env())
            self.values.append(values)
            if self.on_eval is not None:
                self.on_eval(self.schedule[len(self.values) - 1], float(values.mean()))

    def _on_training_start(self) -> None:
        self._evaluate_due(self.num_timesteps)

    def _on_step(self) -> bool:
        self._evaluate_due(self.num_timesteps)
        if self.stop_when_frozen and self._policy_fixed() and len(self.values) < len(self.schedule):
            self.stopped_at = int(self.num_timesteps)
            self._evaluate_due(self.schedule[-1])  # one evaluation of the fixed policy fills the rest
            return False
        return True

    def _policy_fixed(self) -> bool:
        """Whether the acting policy, and what it sees, can no longer change in this run."""
        if not getattr(self.model, "policy_frozen", False):
            return False
        vec_normalize = self.model.get_vec_normalize_env()
        return vec_normalize is None or not vec_normalize.training

    def finish(self) -> np.ndarray:
        """All scheduled values, shape ``(n_points, n_goals)``."""
        self._evaluate_due(self.schedule[-1])
        return np.stack(self.values)


def make_train_env(env_id: str, n_envs: int, seed: int, goal: Sequence[float] | None = None,
                   split: str = "test", normalize: Any = False, gamma: float | None = None,
                   env_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """Training envs: goals from ``split`` at every reset, or pinned to ``goal``.

    ``normalize`` is a recipe's value (see :func:`~sb3_ml3.experiments.settings.normalize_kwargs`);
    ``gamma`` is the algorithm's discount, which VecNormalize's reward scaling must use.
    """
    kwargs = dict(env_kwargs or {})
    if goal is None:
        kwargs["task_split"] = split
    else:
        kwargs["goal"] = np.asarray(goal, dtype=np.float64)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=kwargs)
    vec_kwargs = normalize_kwargs(normalize, gamma)
    return VecNormalize(env, **vec_kwargs) if vec_kwargs is not None else env


def initial_policy_state(env: VecEnv, seed: int, net_arch: Sequence[int]) -> dict[str, torch.Tensor]:
    """The initial policy of ``seed``: the weights of a fresh ``ActorCriticPolicy`` built after seeding.

    Every algorithm loads these weights, so all start from the same policy per seed (METRICS.md).
    """
    set_random_seed(seed)
    policy = ActorCriticPolicy(env.observation_space, env.action_space, lambda _: 0.0, **policy_kwargs_for(net_arch))
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def load_initial_policy(model: BaseAlgorithm, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model.policy`` in place (optimisers keep pointing at the same tensors)."""
    own = model.policy.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise ValueError(
            f"{type(model).__name__}'s policy does not match the shared initial policy: "
            f"{sorted((k, tuple(v.shape)) for k, v in own.items())} vs "
            f"{sorted((k, tuple(v.shape)) for k, v in state.items())}. Use the same policy_kwargs for every algorithm."
        )
    model.policy.load_state_dict(state)


def recorded_meta_inputs(meta_loss: MetaLoss | str | os.PathLike) -> dict[str, Any]:
    """``meta_inputs`` (and ``task_loss``) recorded with a saved meta-loss: meta-test feeds it what it was trained on."""
    metadata = meta_loss.metadata if isinstance(meta_loss, MetaLoss) else MetaLoss.load(meta_loss).metadata
    inputs = metadata.get("meta_inputs")
    fed = {"meta_inputs": tuple(inputs)} if inputs else {}
    if metadata.get("task_loss") is not None:  # how its advantage input was computed
        fed["task_loss"] = metadata["task_loss"]
    if metadata.get("inner_optimizer") is not None:  # the inner step rule it was meta-trained for
        fed["inner_optimizer"] = metadata["inner_optimizer"]
    return fed


def build_model(algo: str, env: VecEnv, seed: int, settings: Mapping[str, Any], net_arch: Sequence[int],
                meta_loss: MetaLoss | str | os.PathLike | None = None) -> BaseAlgorithm:
    """``algo``'s model for a meta-test or baseline run, from its recipe section ``settings``."""
    kwargs = {k: v for k, v in settings.items() if k not in RUN_KEYS}
    policy_kwargs = policy_kwargs_for(net_arch)
    if algo == "ml3":
        from sb3_ml3.ml3 import ML3

        if meta_loss is None:
            raise ValueError("ML3 at meta-test needs a meta-loss (a file from ML3.save_meta_loss or a MetaLoss).")
        # a loss is fed what it was meta-trained on, whatever the env's recipe reads
        test_kwargs = {**kwargs.get("meta_test", {}), **recorded_meta_inputs(meta_loss)}
        loss = copy.deepcopy(meta_loss) if isinstance(meta_loss, MetaLoss) else meta_loss
        return ML3("MlpPolicy", env, meta_train=False, meta_loss=loss, seed=seed, policy_kwargs=policy_kwargs,
                   **test_kwargs)
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO("MlpPolicy", env, seed=seed, policy_kwargs=policy_kwargs, **kwargs)
    if algo == "trpo":
        from sb3_contrib import TRPO

        return TRPO("MlpPolicy", env, seed=seed, policy_kwargs=policy_kwargs, **kwargs)
    raise ValueError(f"Unknown algorithm {algo!r}; expected one of {ALGOS}.")


def algo_gamma(algo: str, settings: Mapping[str, Any]) -> float:
    """The discount ``algo`` trains with (what VecNormalize's reward scaling must use)."""
    if algo == "ml3":
        return float(settings.get("meta_test", {}).get("gamma", 0.99))
    return float(settings.get("gamma", 0.99))


def run_one(env_id: str, algo: str, settings: Mapping[str, Any], seed: int, net_arch: Sequence[int],
            goals: np.ndarray, schedule: Sequence[int], total_timesteps: int, task: int | None = None,
            meta_loss: MetaLoss | str | os.PathLike | None = None, env_kwargs: dict[str, Any] | None = None,
            on_eval: Callable[[int, float], None] | None = None,
            keep_model: bool = False, split: str = "test",
            callbacks: Sequence[BaseCallback] = ()) -> tuple[dict[str, Any], BaseAlgorithm | None]:
    """Train ``algo`` once from the shared initial policy of ``seed``; returns ``(run record, model)``.

    ``task`` is ``None`` for a goal-conditioned run on the ``split`` region (``"test"``, or ``"train"`` to select
    among candidates without touching held-out goals) evaluated on all ``goals``, or the index of the one goal
    the env is pinned to. The record holds the curve (mean over its
    goals), the per-goal values, and the final policy's behaviour (METRICS.md): fraction of actions
    on the bounds, final distance, success rate. The model comes back only with ``keep_model``. ``callbacks``
    (SB3 callbacks) run after the evaluation's own, e.g. a probe that changes the meta-loss mid-run.
    """
    from sb3_ml3.evaluation import evaluate_policy_on_goals

    t0 = time.time()
    run_goals = goals if task is None else goals[task:task + 1]
    env = make_train_env(env_id, int(settings.get("n_envs", 8)), seed, goal=None if task is None else goals[task],
                         split=split, normalize=settings.get("normalize", False), gamma=algo_gamma(algo, settings),
                         env_kwargs=env_kwargs)
    try:
        init = initial_policy_state(env, seed, net_arch)
        model = build_model(algo, env, seed, settings, net_arch, meta_loss)
        load_initial_policy(model, init)
        eval_seed = EVAL_SEED + (task or 0)
        callback = TaskMetricCallback(env_id, run_goals, schedule, eval_seed, env_kwargs=env_kwargs,
                                      on_eval=on_eval, stop_when_frozen=True)
        model.learn(total_timesteps, callback=CallbackList([callback, *callbacks]) if callbacks else callback)
        values = callback.finish()  # (points, goals)
        behaviour = evaluate_policy_on_goals(model, env_id, run_goals, seed=eval_seed, env_kwargs=env_kwargs,
                                             vec_normalize=model.get_vec_normalize_env()).to_dict()
    finally:
        env.close()
    record = {
        "algo": algo, "net_arch": list(net_arch), "arch": arch_key(net_arch), "seed": int(seed), "task": task,
        "goals": run_goals.tolist(), "curve": values.mean(axis=1).tolist(), "per_goal": values.T.tolist(),
        "timesteps": int(model.num_timesteps), "stopped_frozen_at": callback.stopped_at,
        "behaviour": behaviour_summary(behaviour), "wall_time_s": round(time.time() - t0, 2),
    }
    return record, (model if keep_model else None)


def behaviour_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """Means of an evaluation's per-goal behaviour (``evaluate_policy_on_goals(...).to_dict()``)."""
    def mean(key: str) -> float | None:
        values = result.get(key)
        return None if values is None else float(np.mean(np.asarray(values, dtype=float)))

    return {
        "metric": mean("metric"),
        "final_distance": mean("final_distance"),
        "success_rate": mean("success"),
        "saturation": mean("saturation"),
        "per_goal_final_distance": [float(v) for v in result.get("final_distance", [])],
    }


__all__ = [
    "EVAL_SEED",
    "TASK_SEED",
    "TaskMetricCallback",
    "algo_gamma",
    "behaviour_summary",
    "build_model",
    "evaluation_schedule",
    "initial_policy_state",
    "load_initial_policy",
    "make_train_env",
    "recorded_meta_inputs",
    "run_one",
]
