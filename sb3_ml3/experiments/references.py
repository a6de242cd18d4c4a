"""Reference policies for every RL table (METRICS.md): the floor and the ceiling of a task metric.

A learned policy's number means little on its own, so every table carries, on the same held-out
goals, evaluation seeds and metric, the **floor** -- policies that learn nothing: zero action,
uniform random actions, the best constant action (a learner that does not beat it by more than
the seed noise has learned nothing) -- and the **ceiling**: an oracle where a cheap one exists
(:func:`oracle_for`), else a long-trained expert from a file (:class:`ExpertPolicy`), labelled
"expert", never "oracle".

Every policy here has SB3's ``predict(obs, state=None, episode_start=None, deterministic=True)``
on a batch of **raw** env observations (references never see VecNormalize'd ones), so
:func:`sb3_ml3.evaluation.evaluate_policy_on_goals` evaluates them like a trained model.
:func:`evaluate_references` gives the mapping that goes verbatim into results.json's "references".
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_ml3.evaluation import EvaluationResult, Predictor, evaluate_policy_on_goals
from sb3_ml3.experiments.oracles import (MountainCarOracle, PointmassOracle, ReacherOracle,  # noqa: F401
                                         ReferencePolicy, oracle_for)

#: evaluation seeds of the references when none is given (the comparison's EVAL_SEED)
DEFAULT_EVAL_SEED = 12345
#: grid points per action dimension of the best-constant-action search for boxes of <= 2 dims
GRID_POINTS = 5
#: rounds of local refinement around the best grid point (boxes of <= 2 dims)
REFINE_ROUNDS = 3

LABELS: dict[str, str] = {
    "zero_action": "zero action (floor)",
    "random": "uniform random actions (floor)",
    "best_constant_action": "best constant action, chosen on these goals (optimistic floor)",
    "oracle": "oracle (ceiling)",
}


class ConstantActionPolicy(ReferencePolicy):
    """The same action for every observation: a policy that ignores its input.

    In the table because a learner can end up there (a saturated Gaussian plays one corner of the
    box whatever the goal), and then its metric is exactly this row's.
    """

    def __init__(self, action: Sequence[float] | np.ndarray) -> None:
        self.action = np.asarray(action, dtype=np.float32).reshape(-1)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.tile(self.action, (len(obs), 1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.action.tolist()})"


class ZeroActionPolicy(ConstantActionPolicy):
    """The zero action (the box's centre): the env left to its own dynamics, the first floor."""

    def __init__(self, action_space: gym.spaces.Box) -> None:
        super().__init__(((action_space.low.astype(np.float64) + action_space.high) / 2.0).reshape(-1))


class RandomActionPolicy(ReferencePolicy):
    """Uniform random actions in a Box action space, from its own seeded generator.

    The second floor: an untrained policy with wide exploration noise scores about this. Two
    instances with the same seed give the same actions for the same sequence of calls; ``reset()``
    restarts the stream. ``deterministic`` is ignored: the policy *is* random.
    """

    def __init__(self, action_space: gym.spaces.Box, seed: int = 0) -> None:
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"RandomActionPolicy needs a Box action space; got {action_space!r}.")
        self.low = action_space.low.astype(np.float64)
        self.high = action_space.high.astype(np.float64)
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        """Restart the random stream from the seed."""
        self._rng = np.random.default_rng(self.seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._rng.uniform(self.low, self.high, size=(len(obs), *self.low.shape))


class ExpertPolicy:
    """A trained SB3 model loaded from a file, acting on raw observations: the "expert" reference.

    For envs without a cheap oracle (AntGoal), the ceiling is a long-trained policy. It is labelled
    "expert", never "oracle": it is only as good as its training. If the expert was trained on
    VecNormalize'd observations, its statistics normalise the raw observations here.

    Args:
        path: the SB3 model file (``model.save(path)``).
        vec_normalize_path: the pickled VecNormalize (``venv.save(path)``) the expert was trained
            with; ``"auto"`` looks beside the model for ``<stem>_vecnormalize.pkl``,
            ``vecnormalize.pkl`` and ``<stem>/vecnormalize.pkl`` (rl-zoo3's layout), and None uses
            raw observations.
        algo: the SB3 / sb3-contrib algorithm name (``"ppo"``, ``"trpo"``, ``"sac"``, ...) or class.
        device: where the policy runs.
    """

    def __init__(self, path: str | os.PathLike, vec_normalize_path: str | os.PathLike | None = "auto",
                 algo: str | type = "ppo", device: str = "cpu") -> None:
        path = os.fspath(path)
        if not os.path.isfile(path) and not os.path.isfile(path + ".zip"):
            raise FileNotFoundError(f"no expert model at {path!r}: pass the .zip that model.save() wrote.")
        self.path = path
        self.model = _algo_class(algo).load(path, device=device)
        if vec_normalize_path == "auto":
            vec_normalize_path = _find_vec_normalize(path)
        self.vec_normalize_path = None if vec_normalize_path is None else os.fspath(vec_normalize_path)
        self.vec_normalize = None if self.vec_normalize_path is None else _load_vec_normalize(self.vec_normalize_path)

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        obs = np.asarray(observation)
        if self.vec_normalize is not None:
            obs = self.vec_normalize.normalize_obs(obs)
        return self.model.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic)


def _algo_class(algo: str | type) -> type:
    if not isinstance(algo, str):
        return algo
    import sb3_contrib
    import stable_baselines3

    name = algo.upper()
    for module in (stable_baselines3, sb3_contrib):
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"unknown algorithm {algo!r} for ExpertPolicy: name a stable-baselines3 or sb3-contrib "
                     "algorithm (ppo, sac, trpo, ...) or pass its class.")


def _find_vec_normalize(model_path: str) -> str | None:
    stem = model_path[:-4] if model_path.endswith(".zip") else model_path
    candidates = (stem + "_vecnormalize.pkl", os.path.join(os.path.dirname(os.path.abspath(model_path)),
                  "vecnormalize.pkl"), os.path.join(stem, "vecnormalize.pkl"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def _load_vec_normalize(path: str) -> Any:
    """A VecNormalize saved with ``venv.save(path)``, without its env (only ``normalize_obs`` is used)."""
    with open(path, "rb") as f:
        vec_normalize = pickle.load(f)  # noqa: S301 (the user's own statistics file)
    if not hasattr(vec_normalize, "normalize_obs"):
        raise TypeError(f"{path!r} holds a {type(vec_normalize).__name__}, not a VecNormalize: pass the file "
                        "that VecNormalize.save() wrote.")
    vec_normalize.training = False
    return vec_normalize


# --------------------------------------------------------------------------- the best constant action


def action_space_for(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.spaces.Box:
    """The env's action space (a Box for every env of sb3_ml3.envs)."""
    env = gym.make(env_id, **(env_kwargs or {}))
    space = env.action_space
    env.close()
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"{env_id}'s action space is {space!r}; the reference policies need a Box.")
    return space


def constant_action_candidates(action_space: gym.spaces.Box, grid_points: int = GRID_POINTS) -> np.ndarray:
    """The first constant actions :func:`best_constant_action` tries, the zero action (the centre) first.

    Boxes of at most 2 dims: a grid of ``grid_points`` values per dim from low to high (corners and
    centre included; 25 actions in 2-D). Larger boxes (AntGoal's 8 joints), where the grid and even
    the 256 corners would cost too many episodes: the centre, the two all-equal corners (all low,
    all high), and the centre moved to the low and to the high bound on each axis alone
    (2 * dims + 3 actions, 19 for the ant).
    """
    low, high = _bounds(action_space)
    centre = (low + high) / 2.0
    if low.size <= 2:
        axes = [np.linspace(lo, hi, grid_points) for lo, hi in zip(low, high)]
        candidates = [np.array(c) for c in itertools.product(*axes)]
    else:
        candidates = [low.copy(), high.copy()]
        for i, bound in itertools.product(range(low.size), (0, 1)):
            a = centre.copy()
            a[i] = (low, high)[bound][i]
            candidates.append(a)
    candidates = [c for c in candidates if not np.allclose(c, centre)]
    return np.stack([centre, *candidates]).astype(np.float32)


def _bounds(action_space: gym.spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    return action_space.low.astype(np.float64).reshape(-1), action_space.high.astype(np.float64).reshape(-1)


def search_constant_actions(env_id: str, goals: Sequence[Sequence[float]] | np.ndarray, seed: int = DEFAULT_EVAL_SEED,
                            env_kwargs: dict[str, Any] | None = None, grid_points: int = GRID_POINTS,
                            refine_rounds: int = REFINE_ROUNDS) -> tuple[np.ndarray, EvaluationResult]:
    """``(best action, its EvaluationResult)``: :func:`best_constant_action` with the evaluation kept.

    After :func:`constant_action_candidates`, boxes of <= 2 dims are refined ``refine_rounds`` times:
    the 3**dims grid around the best action so far with half the previous spacing (8 more
    episodes' batches per round in 2-D). Ties keep the earlier action, so the zero action wins
    over any constant that does no better.
    """
    goals = np.asarray(goals, dtype=np.float64)
    space = action_space_for(env_id, env_kwargs)
    low, high = _bounds(space)
    results: dict[tuple[float, ...], EvaluationResult] = {}

    def consider(actions: np.ndarray) -> tuple[float, ...]:
        for action in np.asarray(actions, dtype=np.float32):
            key = tuple(float(a) for a in action)
            if key not in results:
                results[key] = evaluate_policy_on_goals(ConstantActionPolicy(action), env_id, goals, seed, env_kwargs)
        return max(results, key=lambda k: results[k].mean_metric)  # max keeps the first of equals

    best = consider(constant_action_candidates(space, grid_points))
    if low.size <= 2:
        step = (high - low) / (grid_points - 1)
        for _ in range(refine_rounds):
            step = step / 2.0
            offsets = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=low.size)))
            best = consider(np.clip(np.asarray(best) + offsets * step, low, high))
    return np.asarray(best, dtype=np.float32), results[best]


def best_constant_action(env_id: str, goals: Sequence[Sequence[float]] | np.ndarray, seed: int = DEFAULT_EVAL_SEED,
                         env_kwargs: dict[str, Any] | None = None, grid_points: int = GRID_POINTS,
                         refine_rounds: int = REFINE_ROUNDS) -> tuple[np.ndarray, float]:
    """The constant action with the best mean task metric on ``goals``, and that metric.

    Searched over :func:`constant_action_candidates` (corners + a 5-point grid per dim for boxes of
    <= 2 dims, refined around the best; for AntGoal's 8-dim box only the centre, the two all-equal
    corners and each axis alone at +/- its bound). It is chosen on the very goals and seeds it is
    evaluated on, so it is an **optimistic floor**: no searched constant does better on these goals,
    and on other goals the same action may do worse. A learner that does not clear it has learned no
    more than one fixed action tuned on the test set.
    """
    action, result = search_constant_actions(env_id, goals, seed, env_kwargs, grid_points, refine_rounds)
    return action, result.mean_metric


# --------------------------------------------------------------------------- the table's rows


def reference_policies(env_id: str, goals: Sequence[Sequence[float]] | np.ndarray, seed: int = DEFAULT_EVAL_SEED,
                       env_kwargs: dict[str, Any] | None = None) -> dict[str, Predictor]:
    """The reference policies of ``env_id``: "zero_action", "random", "best_constant_action", "oracle".

    "oracle" only where :func:`oracle_for` has one; the best constant action is searched on
    ``goals`` with evaluation seed ``seed`` (see :func:`best_constant_action`), and the random
    policy's generator is seeded with ``seed``.
    """
    space = action_space_for(env_id, env_kwargs)
    action, _ = best_constant_action(env_id, goals, seed, env_kwargs)
    policies: dict[str, Predictor] = {
        "zero_action": ZeroActionPolicy(space),
        "random": RandomActionPolicy(space, seed),
        "best_constant_action": ConstantActionPolicy(action),
    }
    oracle = oracle_for(env_id)
    if oracle is not None:
        policies["oracle"] = oracle
    return policies


def reference_summary(result: EvaluationResult, label: str) -> dict[str, Any]:
    """One row of the references: mean metric, per-goal metrics, behaviour (plain floats) and a label."""
    return {
        "metric": result.mean_metric,
        "per_goal": [float(v) for v in result.metric],
        "final_distance": result.mean_final_distance,
        "success_rate": result.mean_success,
        "saturation": result.mean_saturation,
        "label": label,
    }


def evaluate_references(env_id: str, goals: Sequence[Sequence[float]] | np.ndarray, seed: int = DEFAULT_EVAL_SEED,
                        env_kwargs: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every reference policy of ``env_id`` on ``goals``: ``{name: row}``, JSON-ready.

    Names: "zero_action", "random", "best_constant_action" (its row also has the "action") and,
    where :func:`oracle_for` has one, "oracle". Each row: "metric" (mean over the goals),
    "per_goal", "final_distance", "success_rate", "saturation" (means) and "label". Same goals,
    evaluation seeds (``seed + i`` for goal ``i``) and metric as every algorithm of the table.
    """
    goals = np.asarray(goals, dtype=np.float64)
    rows: dict[str, dict[str, Any]] = {}
    for name, policy in reference_policies(env_id, goals, seed, env_kwargs).items():
        label = LABELS[name] + (f": {policy.description}" if name == "oracle" else "")
        rows[name] = reference_summary(evaluate_policy_on_goals(policy, env_id, goals, seed, env_kwargs), label)
        if name == "best_constant_action":
            rows[name]["action"] = [float(a) for a in policy.action]
    return rows


__all__ = [
    "ConstantActionPolicy",
    "ExpertPolicy",
    "LABELS",
    "MountainCarOracle",
    "PointmassOracle",
    "RandomActionPolicy",
    "ReacherOracle",
    "ReferencePolicy",
    "ZeroActionPolicy",
    "action_space_for",
    "best_constant_action",
    "constant_action_candidates",
    "evaluate_references",
    "oracle_for",
    "reference_policies",
    "reference_summary",
    "search_constant_actions",
]
