"""ML3 beside PPO (and TRPO) on held-out tasks, judged with the paper's metric (METRICS.md).

:func:`run_compare` is the drop-in comparison of the paper's Fig. 4: every algorithm gets

- the same env and the same held-out tasks (``sample_tasks(env_id, n_tasks, "test", seed=TASK_SEED)``),
- the same seeds and the same sample budget (``total_timesteps`` env steps per run),
- the **same initial policy per seed**: one ``ActorCriticPolicy`` is built from the seed and its
  weights are loaded into every algorithm's policy (``ML3Policy`` subclasses ``ActorCriticPolicy``,
  so the parameter names match; PPO and TRPO use ``ActorCriticPolicy`` itself),
- the same observation normalisation (none by default; see ``normalize`` in :data:`COMPARE_SETTINGS`),
- the metric on a fixed schedule: :func:`~sb3_ml3.evaluation.evaluate_task_metric` (deterministic
  policy, one episode per held-out goal, fixed evaluation seeds) at step 0 and every ``eval_every``
  env steps. The value at step ``t`` is the policy acting when the ``t``-th sample is collected, so it
  was trained on at most ``t`` samples (:class:`TaskMetricCallback`).

How the algorithms learn the held-out tasks (``task_mode``):

- ``"distribution"`` (default): one goal-conditioned run per (algorithm, seed) whose training env
  draws a new goal from the **test** region at every reset (``task_split="test"``); it is evaluated
  on the fixed held-out goals. One run learns all of them, so it is ``n_tasks`` times cheaper than
  the paper's protocol, and it is what the goal-conditioned policies and learned loss (the goal is a
  meta-loss input) are built for.
- ``"per_task"``: the paper's Fig. 4 protocol, one run per held-out goal with the env pinned to it
  (``gym.make(id, goal=g)``), evaluated on that goal; a seed's curve is the mean over its tasks.

Either way a seed's curve is the mean over the ``n_tasks`` goals, bands are mean +/- s.e. over
seeds, and samples-to-X% / ratio / break-even come from :mod:`sb3_ml3.metrics` on the mean curve.
In ``"distribution"`` mode the break-even counts learning runs on the held-out distribution.

ML3's meta-loss is either given (a file from ``ML3.save_meta_loss``) or meta-trained first, one per
seed, on the **train** goals with ``ML3_SETTINGS[env_id]["meta_train"]`` for
``meta_train_timesteps`` env steps (those samples are reported and enter the break-even).

The settings of every algorithm live in one place each: :data:`ML3_SETTINGS` (edited by whoever tunes
ML3), :data:`PPO_SETTINGS` (with the table of why), :data:`TRPO_SETTINGS` and :data:`COMPARE_SETTINGS`
(budgets and schedules). ``run_compare(hyperparams={"ppo": {...}})`` overrides them per call.
"""

from __future__ import annotations

import copy
import csv
import json
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
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.metrics import THRESHOLDS, compare_curves
from sb3_ml3.ml3.callbacks import MetaValidationCallback

ALGOS = ("ml3", "ppo", "trpo")
TASK_MODES = ("distribution", "per_task")
#: the held-out tasks are sample_tasks(env_id, n_tasks, "test", seed=TASK_SEED): the same for every seed
#: and algorithm (METRICS.md: "mean over 10 held-out tasks"), so curves of different seeds average.
TASK_SEED = 1000
#: evaluate_task_metric's episode seeds: goal i starts from seed EVAL_SEED + i, for every algorithm
EVAL_SEED = 12345
#: the critic of every policy: fixed, so that ``net_archs`` changes only the policy (the actor)
VF_ARCH = (64, 64)

_ML3_RECIPE = dict(n_steps=50, batch_size=100, n_epochs=1, learning_rate=3e-2, max_grad_norm=1.0,
                   meta_inputs=("obs", "action", "mean", "std", "goal", "advantage"))
#: meta-validation (:class:`~sb3_ml3.ml3.callbacks.MetaValidationCallback`): every 25k meta-train steps
#: a frozen copy of the loss trains a fresh policy on train-split goals for 10 updates, measured after
#: 2, 5 and 10; the best copy is kept. Its env steps (about 22% more) count as meta-train samples.
_VALIDATION = dict(eval_freq=25_000, eval_at_updates=(2, 5, 10), n_goals=10)


def _ml3_env_settings(meta_train_timesteps: int, meta_validation: Mapping[str, Any],
                      recipe: Mapping[str, Any] | None = None, task: Mapping[str, Any] | None = None,
                      **meta_test: Any) -> dict[str, Any]:
    """One env's entry of :data:`ML3_SETTINGS`: the shared recipe (``recipe`` overrides it in both
    phases), its budget, its meta-train-only task loss (``task``) and its meta-test extras."""
    shared = dict(_ML3_RECIPE, **(recipe or {}))
    return dict(
        n_envs=8,
        meta_train=dict(**shared, meta_lr=3e-3, policy_reset_interval=25,
                        meta_loss_kwargs={"quadratic": ("mean",)}, **(task or {})),
        meta_train_timesteps=meta_train_timesteps,
        meta_train_net_arch=[64, 64],
        meta_validation=dict(meta_validation),
        meta_test=dict(shared, **meta_test),
    )


#: ML3's settings per env, the one place to edit them. ``meta_train``/``meta_test``: ML3 keyword
#: arguments for Algorithm 4 / 5; ``n_envs``: parallel envs of both; ``meta_train_timesteps``: env steps
#: of meta-training when no meta-loss is given; ``meta_train_net_arch``: the policy it meta-trains on.
#: Current best known recipe (PointmassGoal, BENCHMARKS.md "Model-free ML3"): n_envs 8, 50 steps x 8
#: envs per update, one SGD pass in minibatches of 100 at alpha 3e-2 with the inner gradient clipped to
#: norm 1, eta 3e-3, fresh policy every 25 updates, quadratic loss in mu, and the (normalised)
#: advantage as a sixth meta-loss input, and meta-validation (:data:`_VALIDATION`) to keep the best loss.
#: ReacherGoal's meta-test makes two passes over each rollout and stops after 13 updates: the same ~100
#: inner steps as a meta-training lifetime (25 updates x 4 minibatches), taken on fewer samples. Chosen
#: on the train-split validation goals (MetaValidationCallback's), not on the held-out goals: with the
#: five shipped losses, the mean metric over 1k-12k steps was -6.71 against -6.90 for one pass and 25
#: updates (-6.76 for alpha 5e-2; -6.74 for two passes and 25 updates, which drifts after 8k steps).
#: AntGoal: whole 200-step episodes per update (minibatches of 400), the task loss weighted by the
#: progress towards the goal (``task_reward="progress"``: Ant's reward is dominated by its control cost,
#: and a loss meta-trained on it kept the ant still), validation every 100k steps and a meta-test that
#: stops after 10 updates, the horizon validation scores. It does not yet learn AntGoal (BENCHMARKS.md).
#: PointmassGoal's and (before this) ReacherGoal's meta-tests stop updating the policy after 25 updates
#: (``max_policy_updates=25``, the horizon the loss was meta-trained for): with meta-validated losses
#: every seed is near its best after 5 updates, and past 25 some losses let the policy drift (5 seeds,
#: [64, 64]: final -7.94 frozen vs -8.26 updated throughout; [128, 128, 128]: -8.06 vs -8.53;
#: BENCHMARKS.md). Without meta-validation freezing had hurt (the 3-seed demo ended at -10.4 vs -8.9:
#: it froze slow seeds early). The price: a frozen policy stops improving, so on budgets far past
#: PPO's plateau PPO can overtake it.
ML3_SETTINGS: dict[str, dict[str, Any]] = {
    "PointmassGoal-v0": _ml3_env_settings(200_000, _VALIDATION, max_policy_updates=25),
    "ReacherGoal-v0": _ml3_env_settings(300_000, _VALIDATION, n_epochs=2, max_policy_updates=13),
    "AntGoal-v0": _ml3_env_settings(
        1_200_000, dict(_VALIDATION, eval_freq=100_000),
        recipe=dict(n_steps=200, batch_size=400), task=dict(task_reward="progress"),
        max_policy_updates=10),
}
#: ML3 settings for an env not in :data:`ML3_SETTINGS`
ML3_DEFAULT = ML3_SETTINGS["PointmassGoal-v0"]

#: PPO per env (rl-zoo3 has no entry for these goal envs, nor for Reacher-v5/Ant-v5). Tuned a little:
#: four settings, 1 seed, 60k steps on the held-out goal region, metric on the 10 held-out goals at
#: 0/10k/.../60k steps (2-core CPU, shared):
#:
#: ===  ================================================  ==========================================
#: id   setting (8 envs each)                             PointmassGoal / ReacherGoal metric curve
#: ===  ================================================  ==========================================
#: A    256 steps, batch 64, 10 epochs, lr 3e-4           -1.37 -0.94 -1.08 -0.73 -0.20 -0.20 -0.13
#:      (FINDINGS-model-free.md's baseline)               -11.2 -10.5 -8.75 -8.76 -9.90 -9.26 -9.46
#: B    128 steps, batch 256, 10 epochs, lr 1e-3          -1.37 -1.29 -0.55 -0.22 -0.19 -0.18 -0.10
#:                                                        -11.2 -7.93 -7.85 -7.57 -8.00 -7.80 -8.18
#: C    64 steps, batch 64, 5 epochs, lr 3e-4, gamma      -1.37 -1.93 -1.61 -1.43 -0.12 -0.09 -0.04
#:      0.9, gae 1.0, clip 0.3 (rl-zoo3's Reacher-v2)     -11.2 -8.90 -8.38 -8.81 -7.48 -7.40 -8.59
#: D    64 steps, batch 128, 10 epochs, lr 1e-3,          -1.37 -1.83 -0.35 -0.04 -0.02 -0.01 -0.02
#:      gamma 0.95  (chosen)                              -11.2 -8.43 -7.49 -8.15 -7.44 -7.42 -7.56
#: ===  ================================================  ==========================================
#:
#: D is the best or tied-best at the end on both and by far the fastest on PointmassGoal; gamma 0.95
#: suits the 50-step episodes. AntGoal (untuned): SB3/rl-zoo3's MuJoCo defaults, 2048 steps per update.
PPO_SETTINGS: dict[str, dict[str, Any]] = {
    "PointmassGoal-v0": dict(n_envs=8, n_steps=64, batch_size=128, n_epochs=10, learning_rate=1e-3,
                             gamma=0.95, gae_lambda=0.95),
    "ReacherGoal-v0": dict(n_envs=8, n_steps=64, batch_size=128, n_epochs=10, learning_rate=1e-3,
                           gamma=0.95, gae_lambda=0.95),
    "AntGoal-v0": dict(n_envs=8, n_steps=256, batch_size=256, n_epochs=10, learning_rate=3e-4),
}
PPO_DEFAULT = PPO_SETTINGS["PointmassGoal-v0"]

#: TRPO (sb3-contrib) per env: rl-zoo3's MuJoCo defaults (n_steps 1024 per env x 1 -> here 8 x 128,
#: batch 128, lr 1e-3 for the critic, target_kl 0.01), untuned.
TRPO_SETTINGS: dict[str, dict[str, Any]] = {
    "PointmassGoal-v0": dict(n_envs=8, n_steps=128, batch_size=128, learning_rate=1e-3, target_kl=0.01),
    "ReacherGoal-v0": dict(n_envs=8, n_steps=128, batch_size=128, learning_rate=1e-3, target_kl=0.01),
    "AntGoal-v0": dict(n_envs=8, n_steps=256, batch_size=128, learning_rate=1e-3, target_kl=0.01),
}
TRPO_DEFAULT = TRPO_SETTINGS["PointmassGoal-v0"]

#: budgets and schedules per env; ``normalize``: VecNormalize observations for every algorithm (off:
#: the goal envs' observations are O(1), and a meta-loss must see them as it saw them in meta-training)
COMPARE_SETTINGS: dict[str, dict[str, Any]] = {
    "PointmassGoal-v0": dict(total_timesteps=100_000, eval_every=2_000, normalize=False),
    "ReacherGoal-v0": dict(total_timesteps=100_000, eval_every=2_000, normalize=False),
    "AntGoal-v0": dict(total_timesteps=1_500_000, eval_every=25_000, normalize=False),
}
COMPARE_DEFAULT = dict(total_timesteps=100_000, eval_every=5_000, normalize=False)

#: ``quick=True``: a tiny run for tests and smoke checks (minutes -> seconds)
QUICK = dict(total_timesteps=2_048, eval_every=512, meta_train_timesteps=1_600, n_tasks=3)

LABELS = {"ml3": "ML3 (learned loss)", "ppo": "PPO", "trpo": "TRPO"}
COLORS = {"ml3": "tab:blue", "ppo": "tab:orange", "trpo": "tab:green"}


# ------------------------------------------------------------------------------------ settings
def settings_for(algo: str, env_id: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``algo``'s settings for ``env_id``, updated with ``overrides`` (one level deep)."""
    table = {"ml3": (ML3_SETTINGS, ML3_DEFAULT), "ppo": (PPO_SETTINGS, PPO_DEFAULT),
             "trpo": (TRPO_SETTINGS, TRPO_DEFAULT), "compare": (COMPARE_SETTINGS, COMPARE_DEFAULT)}
    if algo not in table:
        raise ValueError(f"Unknown algorithm {algo!r}; expected one of {sorted(table)}.")
    settings, default = table[algo]
    out = copy.deepcopy(settings.get(env_id, default))
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_net_arch(text: str | Sequence[int]) -> list[int]:
    """``"128,128,128"`` -> ``[128, 128, 128]``; ``""`` is a linear policy ``[]``."""
    if not isinstance(text, str):
        return [int(v) for v in text]
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"A net_arch is layer widths separated by commas, e.g. 64,64; got {text!r}.") from None


def arch_key(net_arch: Sequence[int]) -> str:
    return "[" + ",".join(str(w) for w in net_arch) + "]"


def policy_kwargs_for(net_arch: Sequence[int]) -> dict[str, Any]:
    """The policy of every algorithm: actor ``net_arch``, critic :data:`VF_ARCH`, SB3's other defaults."""
    return {"net_arch": {"pi": list(net_arch), "vf": list(VF_ARCH)}}


# ------------------------------------------------------------------------------------ initial policies
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


# ------------------------------------------------------------------------------------ evaluation
def evaluation_schedule(total_timesteps: int, eval_every: int) -> list[int]:
    """Env steps at which every algorithm is evaluated: 0, eval_every, 2 eval_every, ..., total."""
    if total_timesteps < 1 or eval_every < 1:
        raise ValueError(f"total_timesteps and eval_every must be positive, got {total_timesteps} and {eval_every}.")
    steps = list(range(0, total_timesteps + 1, eval_every))
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
    filled in from one evaluation (``stopped_at``: the env step it stopped at). The curve is the one
    training to the end gives; only the env steps nobody learns from are skipped.
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
                vec_normalize = self.model.get_vec_normalize_env()
                values = evaluate_task_metric(self.model, self.env_id, self.goals, seed=self.eval_seed,
                                              env_kwargs=self.env_kwargs, vec_normalize=vec_normalize)
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


# ------------------------------------------------------------------------------------ models
def make_train_env(env_id: str, n_envs: int, seed: int, goal: Sequence[float] | None = None,
                   split: str = "test", normalize: bool = False,
                   env_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """Training envs: goals from ``split`` at every reset, or pinned to ``goal``."""
    kwargs = dict(env_kwargs or {})
    if goal is None:
        kwargs["task_split"] = split
    else:
        kwargs["goal"] = np.asarray(goal, dtype=np.float64)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=kwargs)
    if normalize:
        env = VecNormalize(env, norm_obs=True, norm_reward=False)
    return env


def _ml3_meta_inputs(meta_loss: MetaLoss | str | os.PathLike) -> dict[str, Any]:
    """``meta_inputs`` (and ``task_loss``) recorded with a saved meta-loss: meta-test feeds it what it was trained on."""
    metadata = meta_loss.metadata if isinstance(meta_loss, MetaLoss) else MetaLoss.load(meta_loss).metadata
    inputs = metadata.get("meta_inputs")
    fed = {"meta_inputs": tuple(inputs)} if inputs else {}
    if metadata.get("task_loss") is not None:  # how its advantage input was computed
        fed["task_loss"] = metadata["task_loss"]
    return fed


def build_model(algo: str, env: VecEnv, seed: int, settings: Mapping[str, Any], net_arch: Sequence[int],
                meta_loss: MetaLoss | str | os.PathLike | None = None) -> BaseAlgorithm:
    """``algo``'s model for a meta-test/baseline run (``settings`` without ``n_envs``)."""
    kwargs = {k: v for k, v in settings.items() if k != "n_envs"}
    policy_kwargs = policy_kwargs_for(net_arch)
    if algo == "ml3":
        from sb3_ml3.ml3 import ML3

        if meta_loss is None:
            raise ValueError("ML3 at meta-test needs a meta-loss (a file from ML3.save_meta_loss or a MetaLoss).")
        # a loss is fed what it was meta-trained on, whatever the env's default recipe reads (a given loss
        # may come from another recipe, e.g. benchmarks/meta_train_probe.py with other meta_inputs)
        test_kwargs = {**kwargs.get("meta_test", {}), **_ml3_meta_inputs(meta_loss)}
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


class MetaTrainCheckpoint(BaseCallback):
    """Save an interrupted meta-training's state every ``save_freq`` env steps, so it can resume.

    Between rollouts (after the outer step and any meta-validation) it writes the ML3 model
    (``ML3.save``: phi, its Adam state, the policy, the critics) to ``path``, and beside it
    ``<path>.json`` (``fingerprint``, the env steps, the :class:`MetaValidationCallback` history and its
    best snapshot's metric and steps) and ``<path>.best.pt`` (that snapshot's weights). To resume:
    ``ML3.load(path)``, then pass the state :meth:`read` returns as ``restore`` (with the validation
    callback listed before this one in the ``CallbackList``), which gives the new validation callback
    its history and best snapshot back. Each file is written to a temporary name and then renamed, so
    a process killed mid-write leaves complete files.
    """

    def __init__(self, path: str | os.PathLike, save_freq: int, fingerprint: Any = None,
                 validation: MetaValidationCallback | None = None, restore: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if save_freq < 1:
            raise ValueError(f"save_freq must be positive, got {save_freq}.")
        self.path = os.fspath(path)
        self.save_freq = int(save_freq)
        self.fingerprint = _jsonable(fingerprint)  # as read() returns it from the JSON file
        self.validation = validation
        self._restore = restore
        self._last_save = 0

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether a complete checkpoint (the model and its state file) is at ``path``."""
        path = os.fspath(path)
        return os.path.exists(path) and os.path.exists(path + ".json")

    @staticmethod
    def read(path: str | os.PathLike) -> dict[str, Any] | None:
        """The state saved beside the checkpoint ``path``, or ``None`` when there is no checkpoint."""
        path = os.fspath(path)
        if not MetaTrainCheckpoint.exists(path):
            return None
        with open(path + ".json") as f:
            try:
                state = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"The meta-training checkpoint {path}.json is corrupted ({error}); delete "
                                 f"{path} and {path}.json to meta-train from the start.") from error
        best = path + ".best.pt"
        state["best_state"] = torch.load(best, weights_only=True) if os.path.exists(best) else None
        return state

    @staticmethod
    def load_model(path: str | os.PathLike, env: VecEnv, fingerprint: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(ML3 model, state)`` of the checkpoint at ``path`` (``None`` if there is none), after checking
        that it was made with ``fingerprint``; pass the state as ``restore`` to the new callback."""
        from sb3_ml3.ml3 import ML3

        state = MetaTrainCheckpoint.read(path)
        if state is None:
            return None
        if state["fingerprint"] != _jsonable(fingerprint):
            raise ValueError(
                f"The meta-training checkpoint {os.fspath(path)} was made with other settings (other ML3 settings, "
                f"budget or policy); resume with those, or delete {os.fspath(path)} and its .json to start afresh."
            )
        return ML3.load(path, env=env), state

    def _init_callback(self) -> None:
        self._last_save = self.num_timesteps
        if self._restore is not None and self.validation is not None:  # after the validation's own init
            v, r = self.validation, self._restore
            v.history = [(int(t), float(m)) for t, m in r["history"]]
            v.best_metric = float(r["best_metric"]) if r["best_metric"] is not None else -np.inf
            v.best_timesteps = r["best_timesteps"]
            v.best_state = r["best_state"]
            v.validation_timesteps = int(r["validation_timesteps"])
            v._last_eval = int(r["last_eval"])

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self._last_save >= self.save_freq:
            self.save()

    def save(self) -> None:
        self._last_save = self.num_timesteps
        v = self.validation
        state = {
            "fingerprint": self.fingerprint, "num_timesteps": int(self.num_timesteps),
            "history": v.history if v else [], "validation_timesteps": v.validation_timesteps if v else 0,
            "best_metric": (v.best_metric if v and np.isfinite(v.best_metric) else None),
            "best_timesteps": v.best_timesteps if v else None, "last_eval": v._last_eval if v else 0,
        }
        self.model.save(self.path + ".tmp.zip")
        os.replace(self.path + ".tmp.zip", self.path)
        if v is not None and v.best_state is not None:
            torch.save(v.best_state, self.path + ".best.pt.tmp")
            os.replace(self.path + ".best.pt.tmp", self.path + ".best.pt")
        with open(self.path + ".json.tmp", "w") as f:
            json.dump(_jsonable(state), f)
        os.replace(self.path + ".json.tmp", self.path + ".json")

    @staticmethod
    def remove_files(path: str | os.PathLike) -> None:
        """Delete the files of the checkpoint at ``path``, if any."""
        path = os.fspath(path)
        for suffix in ("", ".json", ".best.pt"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)

    def remove(self) -> None:
        """Delete this checkpoint's files (meta-training finished)."""
        self.remove_files(self.path)


def meta_train_loss(env_id: str, seed: int, timesteps: int, settings: Mapping[str, Any] | None = None,
                    path: str | os.PathLike | None = None, env_kwargs: dict[str, Any] | None = None,
                    normalize: bool = False, progress_bar: bool = False,
                    checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                    fingerprint: Any = None) -> tuple[MetaLoss, int]:
    """Meta-train a loss on ``env_id``'s **train** goals (Algorithm 4); returns it and its env steps.

    With ``settings["meta_validation"]`` (keyword arguments of :class:`MetaValidationCallback`) the
    loss is the best of its meta-validated snapshots, and the validation's env steps are counted in.
    The env steps are written into the loss's metadata as ``meta_train_timesteps`` (and the file, if
    ``path`` is given), so a later comparison can report them and the break-even.

    ``checkpoint_path``: save the meta-training state there (:class:`MetaTrainCheckpoint`) every
    ``checkpoint_every`` env steps (default: the validation's ``eval_freq``, else 100k), and resume from
    it when it exists: meta-training that takes hours survives being stopped. The checkpoint must carry
    the same ``fingerprint`` (the settings that made it); it is deleted when meta-training finishes.
    A resumed run continues phi, its Adam state and the validation history; its random streams start
    afresh, so it is not bit-identical to an uninterrupted run.
    """
    from sb3_ml3.ml3 import ML3

    settings = dict(settings if settings is not None else settings_for("ml3", env_id))
    env = make_train_env(env_id, settings["n_envs"], seed, split="train", normalize=normalize, env_kwargs=env_kwargs)
    loaded = MetaTrainCheckpoint.load_model(checkpoint_path, env, fingerprint) if checkpoint_path is not None else None
    restored = None
    if loaded is not None:
        model, restored = loaded
    else:
        model = ML3("MlpPolicy", env, meta_train=True, seed=seed,
                    policy_kwargs=policy_kwargs_for(settings.get("meta_train_net_arch", [64, 64])),
                    **settings["meta_train"])
    callbacks: list[BaseCallback] = []
    validation = None
    if settings.get("meta_validation"):
        validation = MetaValidationCallback(env_id, seed=seed, env_kwargs=env_kwargs, **settings["meta_validation"])
        callbacks.append(validation)
    checkpoint = None
    if checkpoint_path is not None:
        every = checkpoint_every or (validation.eval_freq if validation is not None else 100_000)
        checkpoint = MetaTrainCheckpoint(checkpoint_path, every, fingerprint, validation, restored)
        callbacks.append(checkpoint)
    remaining = timesteps - (model.num_timesteps if restored is not None else 0)
    if remaining > 0:
        model.learn(remaining, callback=CallbackList(callbacks) if callbacks else None, progress_bar=progress_bar,
                    reset_num_timesteps=restored is None)
    used = int(model.num_timesteps)
    if validation is not None and validation.history:  # the selection's samples are part of meta-training's cost
        used += validation.validation_timesteps
        model.meta_loss.metadata["meta_validation"] = {
            "history": validation.history, "best_timesteps": validation.best_timesteps,
            "best_metric": validation.best_metric, "validation_timesteps": validation.validation_timesteps,
            "settings": dict(settings["meta_validation"]),
        }
    model.meta_loss.metadata["meta_train_timesteps"] = used
    model.meta_loss.metadata["meta_train_seed"] = int(seed)
    if restored is not None:
        model.meta_loss.metadata["resumed_at_timesteps"] = int(restored["num_timesteps"])
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        model.save_meta_loss(path)
        meta_loss = MetaLoss.load(path)
    else:
        meta_loss = copy.deepcopy(model.meta_loss)
        meta_loss.metadata.update({"meta_inputs": list(model.meta_inputs)})
    if checkpoint is not None:
        checkpoint.remove()
    env.close()
    return meta_loss, used


# ------------------------------------------------------------------------------------ the comparison
#: finished runs of a comparison, one JSON line each after a header with the shared settings' fingerprint
RUNS_FILE = "runs_done.jsonl"


class _RunLog:
    """The finished runs of a comparison in ``out_dir/runs_done.jsonl``, so a long one can resume.

    The header holds the fingerprint of what every run shares (env, tasks, budget, schedule); a
    resumed comparison must match it. Each run line carries its own algorithm's fingerprint (its
    settings and, for ML3, its loss): a run is reused only while that is unchanged, so changing
    ML3's recipe reruns ML3 and keeps the hours of PPO runs. Each meta-loss the comparison
    meta-trains gets a ``{"meta_loss": seed, "fingerprint": ...}`` line: a saved loss is reused
    only by the ML3 settings that made it.
    """

    def __init__(self, out_dir: str | os.PathLike, fingerprint: dict[str, Any], resume: bool) -> None:
        self.path = os.path.join(out_dir, RUNS_FILE)
        self.runs: dict[tuple, dict[str, Any]] = {}
        self.meta_losses: dict[int, Any] = {}
        header = json.dumps({"fingerprint": fingerprint}, sort_keys=True)
        if resume and os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.read().splitlines()
            try:
                saved = json.loads(lines[0])["fingerprint"] if lines else None
                loaded = [json.loads(line) for line in lines[1:] if line.strip()]
                for r in loaded:  # later lines win: a rerun replaces the run it redid
                    if "meta_loss" in r:
                        self.meta_losses[int(r["meta_loss"])] = r["fingerprint"]
                    else:
                        self.runs[self._key(r["algo"], r["net_arch"], r["seed"], r["task"])] = r
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{self.path} is not a run log of ml3 compare ({exc}); move it away to start over.") from None
            if saved != json.loads(header)["fingerprint"]:
                raise ValueError(
                    f"The comparison in {os.path.dirname(self.path) or '.'} was started with another env, task set, "
                    "budget or evaluation schedule; resume it with the same ones, or use another output folder."
                )
            return
        os.makedirs(out_dir, exist_ok=True)
        with open(self.path, "w") as f:
            f.write(header + "\n")

    @staticmethod
    def _key(algo: str, net_arch: Sequence[int], seed: int, task: int | None) -> tuple:
        return algo, tuple(int(w) for w in net_arch), int(seed), task

    def get(self, algo: str, net_arch: Sequence[int], seed: int, task: int | None,
            fingerprint: Any) -> tuple[dict[str, Any] | None, bool]:
        """``(run, changed)``: the finished run if it ran with ``fingerprint`` (its algorithm's current
        settings), else ``None``; ``changed`` when a finished run exists but with other settings."""
        run = self.runs.get(self._key(algo, net_arch, seed, task))
        if run is None:
            return None, False
        if _jsonable(fingerprint) != run.get("fingerprint"):
            return None, True
        return {k: v for k, v in run.items() if k != "fingerprint"}, False

    def add(self, run: dict[str, Any], fingerprint: Any) -> None:
        self._append(dict(run, fingerprint=fingerprint))

    def add_meta_loss(self, seed: int, fingerprint: Any) -> None:
        self.meta_losses[int(seed)] = _jsonable(fingerprint)
        self._append({"meta_loss": int(seed), "fingerprint": fingerprint})

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")


def run_compare(
    env_id: str,
    algos: Sequence[str] = ("ml3", "ppo"),
    meta_loss: MetaLoss | str | os.PathLike | None = None,
    meta_train_steps: int | None = None,
    meta_train_samples: int | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n_tasks: int = 10,
    total_timesteps: int | None = None,
    eval_every: int | None = None,
    net_archs: Sequence[Sequence[int]] = ((64, 64),),
    hyperparams: Mapping[str, Mapping[str, Any]] | None = None,
    task_mode: str = "distribution",
    env_kwargs: dict[str, Any] | None = None,
    quick: bool = False,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    verbose: int = 1,
) -> dict[str, Any]:
    """ML3 beside PPO (and TRPO) on ``n_tasks`` held-out goals; returns a JSON-ready result dict.

    :param env_id: a goal env id (``PointmassGoal-v0``, ``ReacherGoal-v0``, ``AntGoal-v0``, ...).
    :param algos: from :data:`ALGOS`; ``"ppo"`` is the reference of the metrics (m_ref).
    :param meta_loss: ML3's loss: a :class:`MetaLoss`, a file from ``ML3.save_meta_loss``, a path with
        ``{seed}`` in it (one file per seed, e.g. ``out/meta_loss_seed{seed}.zip``), or ``None``
        to meta-train one per seed on the train goals first (``meta_train_steps`` env steps, default
        ``ML3_SETTINGS[env_id]["meta_train_timesteps"]``).
    :param meta_train_samples: the meta-train env steps of a given ``meta_loss`` when its file does not
        record them (``meta_train_timesteps`` in its metadata); used for the break-even.
    :param seeds: one run per algorithm and seed (and goal, in ``"per_task"`` mode).
    :param n_tasks: held-out goals, ``sample_tasks(env_id, n_tasks, "test", seed=TASK_SEED)``.
    :param total_timesteps: env steps per run (meta-test samples), default from :data:`COMPARE_SETTINGS`.
    :param eval_every: env steps between evaluations, default from :data:`COMPARE_SETTINGS`.
    :param net_archs: policy (actor) architectures; each is run by every algorithm, with the same loss
        (architecture transfer, Fig. 4c-d). The loss is meta-trained on ``meta_train_net_arch``.
    :param hyperparams: per-algorithm overrides of the settings tables, e.g. ``{"ppo": {"n_epochs": 5},
        "ml3": {"meta_test": {"learning_rate": 3e-3}}, "compare": {"normalize": True}}``.
    :param task_mode: ``"distribution"`` or ``"per_task"`` (see the module docstring).
    :param env_kwargs: extra env arguments (training and evaluation).
    :param quick: tiny budgets (:data:`QUICK`) for smoke tests; explicit arguments still win.
    :param out_dir: if given, meta-losses (``meta_loss_seed{s}.zip``) are saved there, and every
        finished run is appended to ``runs_done.jsonl`` there (:data:`RUNS_FILE`).
    :param resume: continue an interrupted comparison in ``out_dir``: its saved meta-losses and
        finished runs are reused, an interrupted meta-training continues from its checkpoint
        (``meta_train_seed{s}_checkpoint.zip``, :class:`MetaTrainCheckpoint`), the rest is run. The env, tasks, budget and evaluation schedule must
        be the ones it was started with; seeds, architectures and algorithms may be added (only the new
        runs run), and a run whose algorithm's settings (or, for ML3, loss) changed is run again, so
        ML3's recipe can change while the PPO runs are kept.
    """
    from sb3_ml3.envs import sample_tasks

    algos = list(dict.fromkeys(algos))
    unknown = [a for a in algos if a not in ALGOS]
    if unknown or not algos:
        raise ValueError(f"algos must be a non-empty subset of {ALGOS}, got {list(algos)}.")
    if task_mode not in TASK_MODES:
        raise ValueError(f"task_mode must be one of {TASK_MODES}, got {task_mode!r}.")
    if not seeds:
        raise ValueError("Give at least one seed.")
    hyperparams = dict(hyperparams or {})
    unknown = [k for k in hyperparams if k not in (*ALGOS, "compare")]
    if unknown:
        raise ValueError(f"hyperparams keys must be among {(*ALGOS, 'compare')}, got {unknown}.")
    compare_settings = settings_for("compare", env_id, hyperparams.get("compare"))
    settings = {a: settings_for(a, env_id, hyperparams.get(a)) for a in algos}
    ml3_settings = settings.get("ml3") or settings_for("ml3", env_id, hyperparams.get("ml3"))
    if quick:
        n_tasks = min(n_tasks, QUICK["n_tasks"])
    total_timesteps = total_timesteps or (QUICK["total_timesteps"] if quick else compare_settings["total_timesteps"])
    eval_every = eval_every or (QUICK["eval_every"] if quick else compare_settings["eval_every"])
    if meta_train_steps is None:
        meta_train_steps = QUICK["meta_train_timesteps"] if quick else ml3_settings["meta_train_timesteps"]
    schedule = evaluation_schedule(total_timesteps, eval_every)
    net_archs = [parse_net_arch(a) for a in net_archs]
    if not net_archs:
        raise ValueError("Give at least one net_arch.")
    normalize = bool(compare_settings.get("normalize", False))
    goals = sample_tasks(env_id, n_tasks, "test", seed=TASK_SEED)
    log = print if verbose else (lambda *a, **k: None)
    start = time.time()
    if resume and out_dir is None:
        raise ValueError("resume=True continues the comparison saved in out_dir: give out_dir.")
    fingerprint = _jsonable({  # what every run shares; each algorithm's own settings are per run
        "env_id": env_id, "n_tasks": n_tasks, "task_mode": task_mode, "total_timesteps": total_timesteps,
        "eval_every": eval_every, "normalize": normalize, "env_kwargs": env_kwargs or {}, "quick": quick,
    })
    meta_train_fingerprint = _jsonable({"meta_train": {k: v for k, v in ml3_settings.items() if k != "meta_test"},
                                        "meta_train_steps": meta_train_steps})
    run_fingerprints = {a: _jsonable({"settings": settings[a]}) for a in algos}
    if "ml3" in algos:
        run_fingerprints["ml3"]["meta_loss"] = (
            meta_train_fingerprint if meta_loss is None
            else "MetaLoss object" if isinstance(meta_loss, MetaLoss) else os.fspath(meta_loss))
    done_runs = _RunLog(out_dir, fingerprint, resume) if out_dir is not None else None

    # ---- ML3's loss per seed: given, or meta-trained on the train goals
    losses: dict[int, MetaLoss | str | os.PathLike] = {}
    meta_train: dict[str, Any] = {"given": meta_loss is not None, "per_seed": {}}
    if "ml3" in algos:
        if meta_loss is not None:
            per_seed = isinstance(meta_loss, (str, os.PathLike)) and "{seed}" in os.fspath(meta_loss)
            if per_seed:  # one file per seed, e.g. the meta_loss_seed{seed}.zip of an earlier comparison
                losses = {seed: os.fspath(meta_loss).format(seed=seed) for seed in seeds}
                missing = [path for path in losses.values() if not os.path.exists(path)]
                if missing:
                    raise ValueError(f"--meta-loss {os.fspath(meta_loss)!r}: no file {missing[0]!r} for its seed.")
            else:
                losses = {seed: meta_loss for seed in seeds}
            recorded = []
            for seed, loss in losses.items():
                loaded = loss if isinstance(loss, MetaLoss) else MetaLoss.load(loss)
                recorded.append(loaded.metadata.get("meta_train_timesteps"))
                if per_seed:
                    meta_train["per_seed"][str(seed)] = {"samples": recorded[-1], "path": loss}
            known = [r for r in recorded if r is not None]
            meta_train["samples"] = (meta_train_samples if meta_train_samples is not None
                                     else float(np.mean(known)) if len(known) == len(recorded) else None)
            meta_train["source"] = os.fspath(meta_loss) if not isinstance(meta_loss, MetaLoss) else "MetaLoss object"
        else:
            meta_train["timesteps"] = meta_train_steps
            meta_train["settings"] = _jsonable(ml3_settings["meta_train"])
            meta_train["net_arch"] = ml3_settings.get("meta_train_net_arch", [64, 64])
            for seed in seeds:
                t0 = time.time()
                path = None if out_dir is None else os.path.join(out_dir, f"meta_loss_seed{seed}.zip")
                if resume and path is not None and os.path.exists(path):
                    if done_runs is not None and done_runs.meta_losses.get(seed) != meta_train_fingerprint:
                        raise ValueError(
                            f"{path} was meta-trained with other ML3 settings or budget than this command's; "
                            "move it away to meta-train it again, or resume with the settings that made it."
                        )
                    used = MetaLoss.load(path).metadata.get("meta_train_timesteps")
                    log(f"resuming: the meta-loss of seed {seed} is {path} ({used} env steps)")
                    losses[seed] = path
                    meta_train["per_seed"][str(seed)] = {"samples": used, "path": path, "resumed": True}
                    continue
                log(f"meta-training ML3's loss on {env_id}'s train goals, seed {seed}: {meta_train_steps} env steps")
                checkpoint = None if path is None else os.path.join(out_dir, f"meta_train_seed{seed}_checkpoint.zip")
                if checkpoint is not None and not resume:
                    MetaTrainCheckpoint.remove_files(checkpoint)  # a fresh comparison starts afresh
                if checkpoint is not None and MetaTrainCheckpoint.exists(checkpoint):
                    log(f"resuming the meta-training of seed {seed} from {checkpoint}")
                loss, used = meta_train_loss(env_id, seed, meta_train_steps, ml3_settings, path=path,
                                             env_kwargs=env_kwargs, normalize=normalize, progress_bar=progress,
                                             checkpoint_path=checkpoint, fingerprint=meta_train_fingerprint)
                losses[seed] = path if path is not None else loss
                if done_runs is not None:
                    done_runs.add_meta_loss(seed, meta_train_fingerprint)
                meta_train["per_seed"][str(seed)] = {"samples": used, "wall_time_s": round(time.time() - t0, 2),
                                                     "path": path}
            meta_train["samples"] = float(np.mean([v["samples"] for v in meta_train["per_seed"].values()]))

    # ---- every (arch, algo, seed[, task]) run
    task_list = [None] if task_mode == "distribution" else list(range(len(goals)))
    runs: list[dict[str, Any]] = []
    n_runs = len(net_archs) * len(algos) * len(seeds) * len(task_list)
    bar = _progress_bar(n_runs * len(schedule), progress, f"{env_id}: {n_runs} runs")
    try:
        for net_arch in net_archs:
            for seed in seeds:
                for task in task_list:
                    run_goals = goals if task is None else goals[task:task + 1]
                    for algo in algos:
                        label = f"  {algo:5s} {arch_key(net_arch)} seed {seed}" + ("" if task is None else f" task {task}")
                        finished, changed = ((None, False) if done_runs is None
                                             else done_runs.get(algo, net_arch, seed, task, run_fingerprints[algo]))
                        if changed:
                            log(f"{label}: its settings changed, running it again")
                        if finished is not None:
                            runs.append(finished)
                            log(f"{label}: done before (resumed)")
                            if bar is not None:
                                bar.update(len(schedule))
                            continue
                        t0 = time.time()
                        env = make_train_env(env_id, int(settings[algo].get("n_envs", 8)), seed,
                                             goal=None if task is None else goals[task], normalize=normalize,
                                             env_kwargs=env_kwargs)
                        init = initial_policy_state(env, seed, net_arch)
                        model = build_model(algo, env, seed, settings[algo], net_arch, losses.get(seed))
                        load_initial_policy(model, init)

                        def on_eval(step: int, value: float, algo=algo, seed=seed) -> None:
                            if bar is not None:
                                bar.update(1)
                                bar.set_postfix_str(f"{algo} {arch_key(net_arch)} seed {seed}: {value:.3g} @ {step}")

                        callback = TaskMetricCallback(env_id, run_goals, schedule, EVAL_SEED + (task or 0),
                                                      env_kwargs=env_kwargs, on_eval=on_eval, stop_when_frozen=True)
                        model.learn(total_timesteps, callback=callback)
                        values = callback.finish()  # (points, goals)
                        env.close()
                        runs.append({
                            "algo": algo, "net_arch": list(net_arch), "seed": int(seed), "task": task,
                            "goals": run_goals.tolist(), "curve": values.mean(axis=1).tolist(),
                            "per_goal": values.T.tolist(), "timesteps": int(model.num_timesteps),
                            "stopped_frozen_at": callback.stopped_at,
                            "wall_time_s": round(time.time() - t0, 2),
                        })
                        if done_runs is not None:
                            done_runs.add(runs[-1], run_fingerprints[algo])
                        if bar is None:
                            log(f"{label}: metric {values[0].mean():.3g} -> {values[-1].mean():.3g}"
                                + f" ({time.time() - t0:.0f}s)")
    finally:
        if bar is not None:
            bar.close()

    # ---- curves (tasks averaged inside a seed) and METRICS.md per architecture
    curves: dict[str, dict[str, Any]] = {}
    metrics: dict[str, Any] = {}
    for net_arch in net_archs:
        key = arch_key(net_arch)
        per_algo = {}
        for algo in algos:
            per_seed = []
            for seed in seeds:
                seed_runs = [r["per_goal"] for r in runs if r["algo"] == algo and r["seed"] == seed
                             and r["net_arch"] == list(net_arch)]
                per_goal = np.concatenate([np.asarray(p) for p in seed_runs], axis=0)  # (tasks, points)
                per_seed.append(per_goal.mean(axis=0))
            per_algo[algo] = np.stack(per_seed)
            curves[f"{algo} {key}"] = {"algo": algo, "net_arch": list(net_arch),
                                       "per_seed": per_algo[algo].tolist(),
                                       "mean": per_algo[algo].mean(axis=0).tolist()}
        if "ppo" in per_algo:
            try:
                metrics[key] = compare_curves(schedule, per_algo, reference="ppo",
                                              candidate="ml3" if "ml3" in per_algo else None,
                                              meta_train_samples=meta_train.get("samples"))
            except ValueError as exc:
                metrics[key] = {"error": str(exc)}
        else:
            metrics[key] = {"note": "no PPO run: m_ref (PPO's final metric) is undefined"}

    return _jsonable({
        "env_id": env_id,
        "config": {
            "algos": algos, "seeds": list(seeds), "n_tasks": int(n_tasks), "task_mode": task_mode,
            "total_timesteps": int(total_timesteps), "eval_every": int(eval_every), "quick": quick,
            "net_archs": net_archs, "vf_arch": list(VF_ARCH), "normalize": normalize, "task_seed": TASK_SEED,
            "eval_seed": EVAL_SEED, "env_kwargs": _jsonable(env_kwargs or {}),
            "settings": {a: _jsonable(s) for a, s in settings.items()},
        },
        "tasks": goals.tolist(),
        "schedule": schedule,
        "meta_train": _jsonable(meta_train),
        "runs": runs,
        "curves": curves,
        "metrics": metrics,
        "thresholds": list(THRESHOLDS),
        "run_time_s": round(time.time() - start, 2),
    })


# ------------------------------------------------------------------------------------ reporting
def summary_table(results: Mapping[str, Any]) -> str:
    """The printed table: final metric and samples to 50%/80% per algorithm, ratio, meta-train, break-even."""
    cfg = results["config"]
    lines = []
    for key, report in results["metrics"].items():
        lines.append(
            f"{results['env_id']}, policy {key}, {len(cfg['seeds'])} seed(s) x {cfg['n_tasks']} held-out tasks "
            f"({cfg['task_mode']}), {cfg['total_timesteps']:,} env steps per run"
        )
        if "algorithms" not in report or not report["algorithms"]:
            lines.append("  " + report.get("error", report.get("note", "no metrics")))
            continue
        lines.append(f"  m_0 (initial policies) = {report['m_0']:.4g}   m_ref (PPO final, mean of last 3) = "
                     f"{report['m_ref']:.4g}" + (f"   NOTE: {report['note']}" if report.get("note") else ""))
        pcts = [f"{round(100 * t)}%" for t in report["thresholds"]]
        header = f"  {'algorithm':<10}{'final':>10}{'progress':>10}" + "".join(f" {'to ' + p:>25}" for p in pcts)
        lines.append(header)
        for algo, a in report["algorithms"].items():  # a space before every cell: long cells stay apart
            cells = "".join(f" {_samples_text(a['samples_to'][p]):>25}" for p in pcts)
            lines.append(f"  {algo:<10}{a['final_metric']:>10.4g}{100 * a['final_progress']:>9.0f}%{cells}")
        if "ratio" not in report and "ml3" in report["algorithms"] and "ppo" in report["algorithms"]:
            lines.append("  ratio PPO/ML3 samples (meta-test only): n/a   break-even (tasks): n/a   "
                         "(PPO did not improve on the initial policies)")
        if "ratio" in report:
            lines.append("  ratio PPO/ML3 samples (meta-test only): "
                         + "   ".join(f"{p}: {report['ratio'][p]['text']}" for p in pcts))
            samples = report.get("meta_train_samples")
            lines.append("  meta-train samples: " + ("unknown" if samples is None else f"{samples:,.0f}")
                         + "   break-even (tasks): "
                         + "   ".join(f"{p}: {report['break_even_tasks'][p]['text']}" for p in pcts))
    return "\n".join(lines)


def _samples_text(b: Mapping[str, Any]) -> str:
    if b["value"] is None:
        return "n/a"
    if b["kind"] == "lower":
        return f"not reached (>{b['value']:,.0f})"
    return f"{b['value']:,.0f}"


def write_outputs(results: dict[str, Any], out_dir: str | os.PathLike, prefix: str = "compare") -> list[str]:
    """``curves.csv`` (every curve, per goal), the learning-curve PNGs; returns the written paths."""
    from sb3_ml3.plotting import plot_curves

    os.makedirs(out_dir, exist_ok=True)
    written = []
    csv_path = os.path.join(out_dir, f"{prefix}_curves.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env_id", "algo", "net_arch", "seed", "task", "goal", "step", "metric"])
        for run in results["runs"]:
            for goal_index, (goal, values) in enumerate(zip(run["goals"], run["per_goal"])):
                task = run["task"] if run["task"] is not None else goal_index
                for step, value in zip(results["schedule"], values):
                    writer.writerow([results["env_id"], run["algo"], arch_key(run["net_arch"]), run["seed"], task,
                                     " ".join(f"{g:.4f}" for g in goal), step, f"{value:.6g}"])
    written.append(csv_path)
    metric_name = "task metric"
    try:
        from sb3_ml3.evaluation import task_metric_for

        metric_name = {"_sum_negative_distance": "sum of -distance", "_sum_progress": "sum of distance progress",
                       "_negative_final_distance": "-final distance"}.get(task_metric_for(results["env_id"]).__name__,
                                                                           "episode return")
    except Exception:  # pragma: no cover - naming only
        pass
    ylabel = f"{metric_name} (mean over {results['config']['n_tasks']} held-out tasks)"
    archs = results["config"]["net_archs"]
    for net_arch in archs:
        key = arch_key(net_arch)
        selected = {c["algo"]: c for c in results["curves"].values() if c["net_arch"] == list(net_arch)}
        report = results["metrics"].get(key, {})
        hlines = {}
        if "m_ref" in report and "m_0" in report:
            hlines["80% of PPO's final"] = report["m_0"] + 0.8 * (report["m_ref"] - report["m_0"])
        suffix = "x".join(map(str, net_arch)) or "linear"
        name = "learning_curves.png" if len(archs) == 1 else f"learning_curves_{suffix}.png"
        written.append(plot_curves(
            os.path.join(out_dir, name), results["schedule"],
            {LABELS[a]: c["per_seed"] for a, c in selected.items()},
            xlabel="env steps at meta-test", ylabel=ylabel,
            title=f"{results['env_id']}: held-out tasks, policy {key}",
            colors={LABELS[a]: COLORS[a] for a in selected}, hlines=hlines,
            band_note="tasks averaged inside a seed",
        ))
    if len(archs) > 1:  # Fig. 4c-d: the same loss on several architectures
        styles = {"ml3": "-", "ppo": "--", "trpo": ":"}
        cmap = ["tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:cyan", "tab:olive"]
        curves, colors, linestyles = {}, {}, {}
        for i, net_arch in enumerate(archs):
            for c in results["curves"].values():
                if c["net_arch"] == list(net_arch) and c["algo"] in ("ml3", "ppo"):
                    label = f"{LABELS[c['algo']].split(' ')[0]} {arch_key(net_arch)}"
                    curves[label] = c["per_seed"]
                    colors[label] = cmap[i % len(cmap)]
                    linestyles[label] = styles[c["algo"]]
        written.append(plot_curves(
            os.path.join(out_dir, "architecture_transfer.png"), results["schedule"], curves,
            xlabel="env steps at meta-test", ylabel=ylabel,
            title=f"{results['env_id']}: one learned loss, several policy architectures",
            colors=colors, linestyles=linestyles, band_note="tasks averaged inside a seed",
        ))
    return written


def save_results(results: Mapping[str, Any], path: str | os.PathLike) -> str:
    with open(path, "w") as f:
        json.dump(_jsonable(results), f, indent=1)
    return os.fspath(path)


def save_outputs(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything a comparison writes to ``out_dir``; adds ``table``, ``csv`` and ``figures`` to ``results``.

    ``results.json`` (the numbers) comes first, so a long run's numbers survive a failure while drawing.
    """
    os.makedirs(out_dir, exist_ok=True)
    save_results(results, os.path.join(out_dir, "results.json"))
    results["table"] = summary_table(results)
    written = write_outputs(results, out_dir)
    results["csv"] = written[0]
    results["figures"] = written[1:]
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="eval", leave=True)


# ------------------------------------------------------------------------------------ the demo
DEMO_ENV = "ReacherGoal-v0"
#: the demo meta-tests on an architecture the loss never saw (it is meta-trained on [64, 64])
DEMO_NET_ARCH = (128, 128, 128)
DEMO = dict(seeds=(0, 1, 2), total_timesteps=100_000, eval_every=2_000)


def run_demo(quick: bool = False, out_dir: str | os.PathLike | None = None, seeds: Sequence[int] | None = None,
             progress: bool = True, verbose: int = 1, **overrides: Any) -> dict[str, Any]:
    """The README's main command: meta-train a loss on ReacherGoal's training goals, meta-test it on
    the held-out goals with a new policy architecture ([128, 128, 128]), PPO beside it.

    Full: 3 seeds, one meta-loss per seed (``ML3_SETTINGS["ReacherGoal-v0"]["meta_train_timesteps"]``
    env steps each), 100k meta-test steps; ``quick``: one seed and tiny budgets.
    """
    kwargs: dict[str, Any] = dict(
        env_id=DEMO_ENV, algos=("ml3", "ppo"), net_archs=(DEMO_NET_ARCH,),
        seeds=tuple(seeds) if seeds is not None else ((0,) if quick else DEMO["seeds"]),
        total_timesteps=None if quick else DEMO["total_timesteps"],
        eval_every=None if quick else DEMO["eval_every"], quick=quick, out_dir=out_dir,
        progress=progress, verbose=verbose,
    )
    kwargs.update(overrides)
    return run_compare(**kwargs)


__all__ = [
    "ALGOS",
    "COMPARE_SETTINGS",
    "ML3_SETTINGS",
    "PPO_SETTINGS",
    "TASK_MODES",
    "TRPO_SETTINGS",
    "TaskMetricCallback",
    "build_model",
    "evaluation_schedule",
    "initial_policy_state",
    "load_initial_policy",
    "meta_train_loss",
    "MetaTrainCheckpoint",
    "run_compare",
    "run_demo",
    "save_outputs",
    "save_results",
    "settings_for",
    "summary_table",
    "write_outputs",
]
