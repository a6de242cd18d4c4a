"""Recipes: the settings of ML3, PPO, TRPO and the comparison per env, read from YAML files.

One file per env in ``sb3_ml3/experiments/recipes/<env id>.yml`` is the single source that
``ml3 compare``, ``ml3 demo``, the rl-zoo3 wrapper (:mod:`sb3_ml3.rl_zoo`) and the tests read. Each
holds the sections

- ``compare``: ``total_timesteps`` (env steps per run), ``eval_every``, ``n_tasks``;
- ``quick``: the same budgets for ``--quick`` smoke runs, plus ``meta_train_timesteps``;
- ``ml3``: ``n_envs``, ``normalize``, ``meta_train_timesteps``, ``meta_train_net_arch``,
  ``meta_validation`` (:class:`~sb3_ml3.ml3.callbacks.MetaValidationCallback` arguments) and the
  ML3 keyword arguments of meta-training (``meta_train``, Algorithm 4) and meta-test (``meta_test``,
  Algorithm 5);
- ``ppo`` / ``trpo``: ``n_envs``, ``normalize`` and the algorithm's keyword arguments.

``normalize`` is rl-zoo3's key: ``true`` wraps the training envs in
``VecNormalize(norm_obs=True, norm_reward=True)`` (as rl-zoo3 runs MuJoCo tasks), a mapping gives
VecNormalize's arguments, ``false`` leaves them raw. Why each number is what it is lives in
BENCHMARKS.md, not here.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
ALGOS = ("ml3", "ppo", "trpo")
SECTIONS = (*ALGOS, "compare", "quick")
#: the critic of every policy: fixed, so that ``net_archs`` changes only the policy (the actor)
VF_ARCH = (64, 64)


def recipe_env_ids() -> tuple[str, ...]:
    """The env ids that have a recipe file, sorted."""
    return tuple(sorted(name[: -len(".yml")] for name in os.listdir(RECIPE_DIR) if name.endswith(".yml")))


@functools.lru_cache(maxsize=None)
def _read_recipe(env_id: str) -> dict[str, Any]:
    path = os.path.join(RECIPE_DIR, f"{env_id}.yml")
    if not os.path.isfile(path):
        raise ValueError(f"No recipe for {env_id!r}; recipes exist for {', '.join(recipe_env_ids())}.")
    with open(path) as f:
        recipe = yaml.safe_load(f)
    missing = [s for s in SECTIONS if s not in recipe]
    if recipe.get("env_id") != env_id or missing:
        raise ValueError(f"The recipe {path} is malformed: env_id {recipe.get('env_id')!r}, missing sections {missing}.")
    return recipe


def load_recipe(env_id: str) -> dict[str, Any]:
    """The whole recipe of ``env_id`` (a deep copy: callers may change it)."""
    return copy.deepcopy(_read_recipe(env_id))


def settings_for(section: str, env_id: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of one section of ``env_id``'s recipe, updated with ``overrides`` (two levels deep:
    ``{"meta_test": {"learning_rate": 3e-3}}`` changes one key of ``meta_test``)."""
    if section not in SECTIONS:
        raise ValueError(f"Unknown recipe section {section!r}; expected one of {SECTIONS}.")
    out = load_recipe(env_id)[section]
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **copy.deepcopy(dict(value))}
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_hyperparams(hyperparams: Mapping[str, Any] | None, env_id: str) -> dict[str, dict[str, Any]]:
    """Validate per-section overrides (``--hyperparams``): known sections, known keys, mappings.

    A key that neither the recipe nor the algorithm's constructor knows is refused: a typo would
    otherwise be ignored silently or end in a traceback deep inside a run.
    """
    hyperparams = dict(hyperparams or {})
    unknown = [k for k in hyperparams if k not in (*ALGOS, "compare")]
    if unknown:
        raise ValueError(f"hyperparams sections must be among {(*ALGOS, 'compare')}, got {unknown}.")
    recipe = load_recipe(env_id)
    for section, values in hyperparams.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"hyperparams[{section!r}] must be a mapping of settings, got {values!r}.")
        if section == "compare":
            bad = [k for k in values if k not in recipe["compare"]]
            if bad:
                raise ValueError(f"Unknown compare settings {bad}; known: {sorted(recipe['compare'])}.")
        elif section == "ml3":
            bad = [k for k in values if k not in recipe["ml3"]]
            if bad:
                raise ValueError(f"Unknown ml3 settings {bad}; known: {sorted(recipe['ml3'])} (ML3's own arguments go "
                                 "under 'meta_train' or 'meta_test').")
            for phase in ("meta_train", "meta_test", "meta_validation"):
                if phase in values and not isinstance(values[phase], Mapping):
                    raise ValueError(f"hyperparams['ml3'][{phase!r}] must be a mapping, got {values[phase]!r}.")
            for phase in ("meta_train", "meta_test"):
                _check_arguments(f"ml3 {phase}", values.get(phase, {}), _constructor_arguments("ml3"))
            if "meta_validation" in values:
                from sb3_ml3.ml3.callbacks import MetaValidationCallback

                _check_arguments("ml3 meta_validation", values["meta_validation"],
                                 _arguments_of(MetaValidationCallback.__init__))
        else:
            _check_arguments(section, values, _constructor_arguments(section) | {"n_envs", "normalize"})
    return {k: dict(v) for k, v in hyperparams.items()}


def _arguments_of(function: Any) -> set[str]:
    import inspect

    return {name for name in inspect.signature(function).parameters if name not in ("self", "policy", "env")}


def _constructor_arguments(algo: str) -> set[str]:
    """The keyword arguments ``algo``'s constructor accepts (without policy and env)."""
    if algo == "ml3":
        from sb3_ml3.ml3 import ML3 as cls
    elif algo == "ppo":
        from stable_baselines3 import PPO as cls
    else:
        from sb3_contrib import TRPO as cls
    return _arguments_of(cls.__init__)


def _check_arguments(where: str, values: Mapping[str, Any], known: set[str]) -> None:
    bad = sorted(k for k in values if k not in known)
    if bad:
        raise ValueError(f"Unknown {where} settings {bad}; known: {', '.join(sorted(known))}.")


def normalize_kwargs(setting: Any, gamma: float | None = None) -> dict[str, Any] | None:
    """VecNormalize's keyword arguments for a recipe's ``normalize`` value (``None``: no wrapper)."""
    if setting is None or setting is False:
        return None
    kwargs: dict[str, Any] = {"norm_obs": True, "norm_reward": True}
    if isinstance(setting, Mapping):
        kwargs.update(setting)
    elif setting is not True:
        raise ValueError(f"normalize must be true, false or a mapping of VecNormalize arguments, got {setting!r}.")
    if gamma is not None:
        kwargs.setdefault("gamma", gamma)  # the return VecNormalize scales rewards by is the algorithm's
    return kwargs


def parse_net_arch(text: str | Sequence[int]) -> list[int]:
    """``"128,128,128"`` -> ``[128, 128, 128]``; ``""`` is a linear policy ``[]``; widths must be positive."""
    if isinstance(text, str):
        try:
            widths = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise ValueError(f"A net_arch is layer widths separated by commas, e.g. 64,64; got {text!r}.") from None
    else:
        widths = [int(v) for v in text]
    if any(w < 1 for w in widths):
        raise ValueError(f"Layer widths must be positive integers, e.g. 64,64; got {text!r}.")
    return widths


def arch_key(net_arch: Sequence[int]) -> str:
    """``[64, 64]`` -> ``"[64,64]"``: the key of an architecture in results.json."""
    return "[" + ",".join(str(w) for w in net_arch) + "]"


def policy_kwargs_for(net_arch: Sequence[int]) -> dict[str, Any]:
    """The policy of every algorithm: actor ``net_arch``, critic :data:`VF_ARCH`, SB3's other defaults."""
    return {"net_arch": {"pi": list(net_arch), "vf": list(VF_ARCH)}}


#: the inputs of a meta-loss in PPO's family (``MetaLoss(surrogate="ppo")``): its surrogate reads the last two
PPO_FAMILY_INPUTS = ("obs", "action", "mean", "std", "goal", "advantage", "old_log_prob")


def ppo_family_settings(env_id: str, update: str = "ppo") -> tuple[dict[str, Any], int]:
    """ML3's inner-step settings that equal the env's PPO recipe, and its number of envs.

    ``update="ppo"``: PPO's joint update (critic in the same minibatch steps, one gradient clip, advantages
    normalised per minibatch), with which the family at zero correction is SB3's PPO step for step
    (tests/test_ppo_equivalence.py). ``"separate"``: the critic fitted after the actor, its own clip, advantages
    normalised per rollout (the update of the runs before that option existed). ``"auto"``: the update a loss
    file records (``ML3``'s ``"auto"``; a file that records none had the separate one).
    """
    if update not in ("ppo", "separate", "auto"):
        raise ValueError(f"update must be 'ppo', 'separate' or 'auto', got {update!r}.")
    ppo = load_recipe(env_id)["ppo"]
    settings: dict[str, Any] = dict(
        n_steps=ppo["n_steps"], batch_size=ppo["batch_size"], n_epochs=ppo["n_epochs"],
        learning_rate=ppo["learning_rate"], gamma=ppo.get("gamma", 0.99), max_grad_norm=0.5,
        vf_learning_rate=ppo["learning_rate"], inner_optimizer="adam", meta_inputs=list(PPO_FAMILY_INPUTS))
    if update == "ppo":
        settings.update(vf_coef=0.5, normalize_advantage="minibatch")
    elif update == "separate":
        settings.update(vf_coef=None, normalize_advantage=True)
    return settings, int(ppo["n_envs"])


def ppo_family_meta_train(env_id: str, correction: str = "penalty", meta_lr: float = 1e-3,
                          policy_reset_interval: int = 60, drift: bool = False,
                          update: str = "ppo") -> tuple[dict[str, Any], int]:
    """ML3's meta-training arguments for a loss in PPO's family (the r-series of BENCHMARKS.md): the inner step
    of :func:`ppo_family_settings`, PPO's clipped REINFORCE task loss, Adam on phi at ``meta_lr``, a policy reset
    every ``policy_reset_interval`` updates, and a [40, 40] ``correction`` (``drift``: of A and log r only)."""
    settings, n_envs = ppo_family_settings(env_id, update)
    loss_kwargs: dict[str, Any] = {"surrogate": "ppo", "hidden_sizes": [40, 40], "correction": correction}
    if drift:
        loss_kwargs["correction_fields"] = ["advantage"]
    settings.update(meta_lr=meta_lr, policy_reset_interval=policy_reset_interval, task_clip_range=0.2,
                    meta_loss_kwargs=loss_kwargs)
    return settings, n_envs


__all__ = [
    "ALGOS",
    "PPO_FAMILY_INPUTS",
    "RECIPE_DIR",
    "VF_ARCH",
    "arch_key",
    "check_hyperparams",
    "load_recipe",
    "normalize_kwargs",
    "parse_net_arch",
    "policy_kwargs_for",
    "ppo_family_meta_train",
    "ppo_family_settings",
    "recipe_env_ids",
    "settings_for",
]
