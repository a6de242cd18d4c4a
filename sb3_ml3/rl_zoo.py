"""ML3 and the baselines through the RL Baselines3 Zoo: ``python -m sb3_ml3.rl_zoo [train|enjoy] ...``.

rl-zoo3 is optional (``pip install 'sb3-ml3[zoo]'``). This entry point adds ``"ml3": ML3`` to rl-zoo3's
``ALGOS`` (and an ML3 sampler for ``-optimize``), registers the goal envs and runs rl-zoo3's ``train``
(the default subcommand) or ``enjoy`` with their usual flags::

    # meta-train a loss on PointmassGoal's train goals -> logs/ml3/PointmassGoal-v0_1/meta_loss.zip
    python -m sb3_ml3.rl_zoo --algo ml3 --env PointmassGoal-v0
    # meta-test it: a fresh policy on the held-out (test) goals, trained by the frozen loss only
    python -m sb3_ml3.rl_zoo --algo ml3 --env PointmassGoal-v0 \\
        --meta-test-loss logs/ml3/PointmassGoal-v0_1/meta_loss.zip
    # PPO (or TRPO) on the held-out goals, evaluated there too
    python -m sb3_ml3.rl_zoo --algo ppo --env PointmassGoal-v0
    # watch the latest run (add --no-render when headless)
    python -m sb3_ml3.rl_zoo enjoy --algo ml3 --env PointmassGoal-v0 -f logs/

Hyperparameters. rl-zoo3 has none for the goal envs; without ``--conf-file`` they are generated from
this package's recipes (:mod:`sb3_ml3.experiments.settings`, the settings ``ml3 compare`` uses) by
:func:`zoo_hyperparams` and handed to rl-zoo3 as a temporary YAML file. The run's ``config.yml``
keeps them. Goals: ML3 meta-training trains and evaluates on the **train** split; PPO, TRPO and ML3
meta-test on the **test** split, and rl-zoo3's evaluation env is built on the same split
(``--eval-env-kwargs``; rl-zoo3 would otherwise evaluate on the env's default, the train goals).
With your own ``--conf-file`` nothing is added.

The learned loss. Meta-training keeps the best meta-validated loss (the recipe's ``meta_validation``,
:class:`~sb3_ml3.rl_zoo_callbacks.MetaValidationZooCallback` in the ``callback:`` key) and saves it as
``meta_loss.zip`` in the run's folder (``-f``/ml3/<env id>_<n>), next to the saved model, which
holds it too; :mod:`sb3_ml3.rl_zoo_callbacks` says how that folder is found.

rl-zoo3 scores runs with episode returns (``EvalCallback``); the paper's task metric on fixed
held-out goals and the samples-to-80% table come from ``ml3 compare``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from sb3_ml3.rl_zoo_callbacks import MetaValidationZooCallback, SaveMetaLossCallback, run_folder

#: the algorithms whose rl-zoo3 hyperparameters are generated from the recipes
ZOO_ALGOS = ("ml3", "ppo", "trpo")
#: keys of a recipe's algorithm section that are not the algorithm's keyword arguments
_RUN_KEYS = ("n_envs", "normalize")


def goal_env_ids() -> tuple[str, ...]:
    """The registered goal envs (:data:`sb3_ml3.envs.ENV_IDS`): the envs that have hyperparameters here."""
    from sb3_ml3.envs import ENV_IDS

    return ENV_IDS


def _check_env(env_id: str) -> None:
    if env_id not in goal_env_ids():
        raise ValueError(f"No recipe-based rl-zoo3 hyperparameters for {env_id!r}: they exist for the registered "
                         f"goal envs {', '.join(goal_env_ids())}. For another env pass your own --conf-file.")


def _as_python(value: Any) -> str:
    """Python source of ``value`` as rl-zoo3 ``eval``s it (``policy_kwargs``, ``normalize``): ``dict(a=1)``."""
    if isinstance(value, Mapping):
        return "dict(" + ", ".join(f"{k}={_as_python(v)}" for k, v in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_python(v) for v in value) + "]"
    return repr(value)


def _normalize_entry(setting: Any) -> bool | str:
    """A recipe's ``normalize`` as rl-zoo3's key: ``True``/``False``, or a string of VecNormalize kwargs."""
    if isinstance(setting, Mapping):
        return _as_python(dict(setting))
    if setting is None or isinstance(setting, bool):
        return bool(setting)
    raise ValueError(f"A recipe's normalize must be true, false or a mapping of VecNormalize arguments, "
                     f"got {setting!r}.")


def zoo_entry(algo: str, env_id: str, meta_test_loss: str | os.PathLike | None = None) -> dict[str, Any]:
    """rl-zoo3's hyperparameters of ``algo`` on ``env_id``, built from the env's recipe.

    ``ml3``: meta-training (the recipe's ``meta_train`` section, ``meta_train_timesteps`` env steps,
    train goals, :class:`MetaValidationZooCallback` with ``meta_validation``); with ``meta_test_loss``
    the meta-test of that loss instead (``meta_test`` section, ``meta_train: False``, the inputs the
    loss was meta-trained on, ``compare.total_timesteps`` env steps, test goals). ``ppo``/``trpo``:
    the recipe's section, ``compare.total_timesteps`` env steps, test goals. Every policy has the
    architecture the loss is meta-trained with (``ml3.meta_train_net_arch``), as in ``ml3 compare``.
    """
    from sb3_ml3.experiments.settings import load_recipe, policy_kwargs_for

    if algo not in ZOO_ALGOS:
        raise ValueError(f"rl-zoo3 hyperparameters are generated for {', '.join(ZOO_ALGOS)}, not {algo!r}.")
    if meta_test_loss is not None and algo != "ml3":
        raise ValueError(f"--meta-test-loss is a meta-test of ML3; use it with --algo ml3, not --algo {algo}.")
    _check_env(env_id)
    recipe = load_recipe(env_id)
    ml3 = recipe["ml3"]
    section = ml3 if algo == "ml3" else recipe[algo]
    entry: dict[str, Any] = {
        "n_timesteps": int(recipe["compare"]["total_timesteps"]),
        "policy": "MlpPolicy",
        "n_envs": int(section["n_envs"]),
        "normalize": _normalize_entry(section.get("normalize", False)),
        "policy_kwargs": _as_python(policy_kwargs_for(ml3["meta_train_net_arch"])),
        "env_kwargs": {"task_split": "test"},
    }
    if algo != "ml3":
        entry.update({k: v for k, v in section.items() if k not in _RUN_KEYS})
    elif meta_test_loss is not None:
        from sb3_ml3.experiments.runs import recorded_meta_inputs

        path = os.path.abspath(os.fspath(meta_test_loss))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No meta-loss file {path}. Meta-train one first: python -m sb3_ml3.rl_zoo "
                                    f"--algo ml3 --env {env_id} (it writes logs/ml3/{env_id}_<n>/meta_loss.zip).")
        # a loss is fed what it was meta-trained on, whatever the recipe's inputs (as ml3 compare does)
        entry.update({**ml3["meta_test"], **recorded_meta_inputs(path), "meta_train": False, "meta_loss": path})
    else:
        entry["n_timesteps"] = int(ml3["meta_train_timesteps"])
        entry["env_kwargs"] = {"task_split": "train"}
        if ml3.get("meta_validation"):
            name = f"{MetaValidationZooCallback.__module__}.{MetaValidationZooCallback.__name__}"
            entry["callback"] = [{name: {"env_id": env_id, **ml3["meta_validation"]}}]
        else:
            entry["callback"] = [f"{SaveMetaLossCallback.__module__}.{SaveMetaLossCallback.__name__}"]
        entry.update({"meta_train": True, **ml3["meta_train"]})
    return entry


def zoo_hyperparams(algo: str, meta_test_loss: str | os.PathLike | None = None,
                    env_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """rl-zoo3's hyperparameter file of ``algo`` as a dict ``{env id: entry}`` (see :func:`zoo_entry`);
    ``env_ids`` defaults to every registered goal env."""
    return {env_id: zoo_entry(algo, env_id, meta_test_loss) for env_id in (env_ids or goal_env_ids())}


def write_conf_file(hyperparams: Mapping[str, Mapping[str, Any]], directory: str, algo: str) -> str:
    """Write ``hyperparams`` as an rl-zoo3 YAML file ``<directory>/<algo>.yml``; returns its path."""
    path = os.path.join(directory, f"{algo}.yml")
    with open(path, "w") as f:
        f.write(f"# generated by sb3_ml3.rl_zoo from sb3_ml3/experiments/recipes/*.yml ({algo})\n")
        yaml.safe_dump({k: dict(v) for k, v in hyperparams.items()}, f, sort_keys=False)
    return path


def sample_ml3_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """ML3's search space for rl-zoo3's ``-optimize``: inner step (``learning_rate``), ``meta_lr``,
    ``n_steps``, ``batch_size``, ``n_epochs``. A ``batch_size`` that does not divide the rollout
    (``n_steps * n_envs``) prunes the trial. rl-zoo3 scores a trial by the episode returns of the
    model's own policy on the eval env: for meta-training a proxy (its policy is reset every
    ``policy_reset_interval`` updates); with ``--meta-test-loss`` it is the meta-test's return.
    """
    import optuna

    params = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True),
        "meta_lr": trial.suggest_float("meta_lr", 1e-4, 1e-2, log=True),
        "n_steps": trial.suggest_categorical("n_steps", [25, 50, 100, 200]),
        "batch_size": trial.suggest_categorical("batch_size", [50, 100, 200, 400]),
        "n_epochs": trial.suggest_categorical("n_epochs", [1, 2, 5]),
    }
    rollout = params["n_steps"] * n_envs
    if params["batch_size"] > rollout or rollout % params["batch_size"]:
        raise optuna.TrialPruned(f"batch_size {params['batch_size']} does not divide the rollout of {rollout} samples")
    return params


def register() -> dict:
    """Add ML3 to rl-zoo3's ``ALGOS`` and its sampler to ``HYPERPARAMS_SAMPLER`` (idempotent), register
    the goal envs; returns ``ALGOS``."""
    try:
        from rl_zoo3 import hyperparams_opt
        from rl_zoo3 import utils as zoo_utils
    except ImportError as exc:  # pragma: no cover - depends on the optional install
        raise ImportError("rl-zoo3 is not installed: pip install 'sb3-ml3[zoo]' (or pip install rl_zoo3).") from exc
    import sb3_ml3  # noqa: F401  (registers the envs)
    from sb3_ml3.ml3 import ML3

    zoo_utils.ALGOS.setdefault("ml3", ML3)
    hyperparams_opt.HYPERPARAMS_SAMPLER.setdefault("ml3", sample_ml3_params)
    hyperparams_opt.HYPERPARAMS_CONVERTER.setdefault("ml3", dict)  # the sampled params are ML3's kwargs
    return zoo_utils.ALGOS


# ---------------------------------------------------------------------------------------- argv
def _split_equals(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """``--flag=value`` -> ``--flag value`` for ``flags`` (so values can be inserted after the flag)."""
    out: list[str] = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out += [name, value] if eq and name in flags else [arg]
    return out


def _index(argv: Sequence[str], flags: Sequence[str]) -> int | None:
    return next((i for i, arg in enumerate(argv) if arg in flags), None)


def _value(argv: Sequence[str], flags: Sequence[str], default: str) -> str:
    i = _index(argv, flags)
    return argv[i + 1] if i is not None and i + 1 < len(argv) else default


def _dict_values(argv: Sequence[str], flag: str) -> list[str] | None:
    """The ``key:value`` tokens after ``flag`` (an rl-zoo3 ``StoreDict`` argument), ``None`` without it."""
    i = _index(argv, (flag,))
    if i is None:
        return None
    end = next((j for j in range(i + 1, len(argv)) if argv[j].startswith("-")), len(argv))
    return list(argv[i + 1:end])


def _with_split(argv: list[str], flag: str, split: str) -> list[str]:
    """Add ``task_split:'<split>'`` to the ``flag`` argument (appending the flag if absent), unless it
    names a ``task_split`` already."""
    values = _dict_values(argv, flag)
    if values is None:
        return [*argv, flag, f"task_split:{split!r}"]
    if any(arg.startswith("task_split:") for arg in values):
        return argv
    i = argv.index(flag)
    return [*argv[: i + 1], f"task_split:{split!r}", *argv[i + 1:]]


def train_argv(argv: Sequence[str], conf_dir: str) -> list[str]:
    """rl-zoo3 ``train`` arguments for ours: handles ``--meta-test-loss PATH``, writes the generated
    hyperparameters into ``conf_dir`` when no ``--conf-file`` is given and sets the train/eval splits."""
    argv = _split_equals(argv, ("--meta-test-loss", "--env-kwargs", "--eval-env-kwargs", "--algo", "--env"))
    loss = None
    i = _index(argv, ("--meta-test-loss",))
    if i is not None:
        if i + 1 >= len(argv):
            raise ValueError("--meta-test-loss needs the path of a meta-loss file, e.g. "
                             "logs/ml3/<env>_1/meta_loss.zip.")
        loss = argv[i + 1]
        argv = [*argv[:i], *argv[i + 2:]]
    algo, env_id = _value(argv, ("--algo",), "ppo"), _value(argv, ("--env",), "CartPole-v1")
    if _index(argv, ("--conf-file", "-conf")) is not None:
        if loss is not None:
            raise ValueError("--meta-test-loss builds the meta-test from the recipe; with your own --conf-file set "
                             "-params meta_train:False meta_loss:\"'PATH'\" and --env-kwargs task_split:\"'test'\".")
    elif algo in ZOO_ALGOS and (algo == "ml3" or env_id in goal_env_ids()):
        entry = zoo_entry(algo, env_id, loss)  # ML3 on another env: the error says what to do
        argv += ["--conf-file", write_conf_file({env_id: entry}, conf_dir, algo)]
        split = entry["env_kwargs"]["task_split"]
        if _index(argv, ("--env-kwargs",)) is not None:  # the command line replaces the entry's env_kwargs
            argv = _with_split(argv, "--env-kwargs", split)
        if _index(argv, ("--eval-env-kwargs",)) is None:  # evaluate on what rl-zoo3 trains on
            argv += ["--eval-env-kwargs", *(_dict_values(argv, "--env-kwargs") or [f"task_split:{split!r}"])]
        argv = _with_split(argv, "--eval-env-kwargs", split)
    elif loss is not None:
        raise ValueError(f"--meta-test-loss needs --algo ml3 and a goal env ({', '.join(goal_env_ids())}).")
    if _index(argv, ("--gym-packages",)) is None:
        argv += ["--gym-packages", "sb3_ml3"]  # also registers the envs in rl-zoo3's own imports
    return argv


def enjoy_argv(argv: Sequence[str]) -> list[str]:
    """rl-zoo3 ``enjoy`` arguments for ours: without ``--env-kwargs``, a run whose saved env kwargs name
    no ``task_split`` plays on the test goals (PPO, TRPO, ML3 meta-test) or, for a meta-trained ML3
    model, the train goals. Runs of this wrapper saved their split, which rl-zoo3 reuses."""
    from rl_zoo3.utils import get_latest_run_id

    argv = _split_equals(argv, ("--env-kwargs", "--algo", "--env", "--folder", "--exp-id"))
    if _index(argv, ("--gym-packages",)) is None:
        argv += ["--gym-packages", "sb3_ml3"]
    algo, env_id = _value(argv, ("--algo",), "ppo"), _value(argv, ("--env",), "CartPole-v1")
    if _index(argv, ("--env-kwargs",)) is not None or env_id not in goal_env_ids():
        return argv
    folder, exp_id = _value(argv, ("-f", "--folder"), "rl-trained-agents"), int(_value(argv, ("--exp-id",), "0"))
    if exp_id == 0:  # rl-zoo3's "latest run"
        exp_id = get_latest_run_id(os.path.join(folder, algo), env_id)
    params = os.path.join(folder, algo, f"{env_id}_{exp_id}" if exp_id > 0 else "", env_id)
    saved: dict[str, Any] = {}
    for name in ("config.yml", "args.yml"):  # as rl-zoo3's enjoy reads them (the command line wins)
        if os.path.isfile(os.path.join(params, name)):
            with open(os.path.join(params, name)) as f:
                saved[name] = yaml.load(f, Loader=yaml.UnsafeLoader) or {}
    config = saved.get("config.yml", {})
    env_kwargs = saved.get("args.yml", {}).get("env_kwargs") or config.get("env_kwargs") or {}
    if "task_split" in env_kwargs:
        return argv
    split = "train" if algo == "ml3" and config.get("meta_train", False) else "test"
    return [*argv, "--env-kwargs", f"task_split:{split!r}"]


def _run(function: Any, argv: Sequence[str]) -> None:
    saved = sys.argv
    sys.argv = ["sb3_ml3.rl_zoo", *argv]
    try:
        function()
    finally:
        sys.argv = saved


def train(argv: Sequence[str]) -> int:
    """rl-zoo3's ``train`` with ML3 registered and the recipes' hyperparameters by default."""
    register()
    from rl_zoo3.train import train as zoo_train

    if "-h" in argv or "--help" in argv:
        print("sb3_ml3.rl_zoo train: rl-zoo3's train flags, plus --meta-test-loss PATH (with --algo ml3: meta-test "
              "that loss on the held-out goals). Without --conf-file the hyperparameters come from the recipes. "
              "For enjoy: python -m sb3_ml3.rl_zoo enjoy --help.\n")
    with tempfile.TemporaryDirectory(prefix="sb3_ml3_zoo_") as conf_dir:
        try:
            zoo_argv = train_argv(argv, conf_dir)
        except (ValueError, FileNotFoundError) as exc:  # a usage error: one line, no traceback
            print(f"sb3_ml3.rl_zoo: error: {exc}", file=sys.stderr)
            return 2
        _run(zoo_train, zoo_argv)
    return 0


def enjoy(argv: Sequence[str]) -> int:
    """rl-zoo3's ``enjoy`` with ML3 registered and the goal split of the run (see :func:`enjoy_argv`)."""
    register()
    from rl_zoo3.enjoy import enjoy as zoo_enjoy

    _run(zoo_enjoy, enjoy_argv(argv))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sb3_ml3.rl_zoo [train|enjoy] ARGS``: ``train`` when no subcommand is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "enjoy":
        return enjoy(argv[1:])
    return train(argv[1:] if argv and argv[0] == "train" else argv)


__all__ = [
    "MetaValidationZooCallback",
    "SaveMetaLossCallback",
    "ZOO_ALGOS",
    "enjoy",
    "enjoy_argv",
    "goal_env_ids",
    "main",
    "register",
    "run_folder",
    "sample_ml3_params",
    "train",
    "train_argv",
    "write_conf_file",
    "zoo_entry",
    "zoo_hyperparams",
]

if __name__ == "__main__":
    raise SystemExit(main())
