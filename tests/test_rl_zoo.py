"""rl-zoo3 as its users use it: ``python -m sb3_ml3.rl_zoo [train|enjoy]`` with recipe-generated hyperparameters."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

pytest.importorskip("rl_zoo3")

from sb3_ml3.envs import ENV_IDS  # noqa: E402
from sb3_ml3.experiments.settings import load_recipe, policy_kwargs_for  # noqa: E402
from sb3_ml3.rl_zoo import (enjoy_argv, main, register, sample_ml3_params, train_argv, zoo_entry,  # noqa: E402
                            zoo_hyperparams)
from sb3_ml3.rl_zoo_callbacks import META_LOSS_FILE  # noqa: E402

torch.set_num_threads(1)
ENV = "PointmassGoal-v0"
TINY = ["--env", ENV, "-n", "800", "-f", "logs", "--eval-freq", "400", "--eval-episodes", "1", "--seed", "0",
        "--num-threads", "1"]


def _kwargs(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    end = next((j for j in range(i + 1, len(argv)) if argv[j].startswith("-")), len(argv))
    return argv[i + 1:end]


def test_register_adds_ml3_and_its_sampler():
    import optuna
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER

    from sb3_ml3 import ML3

    assert register()["ml3"] is ML3 and HYPERPARAMS_SAMPLER["ml3"] is sample_ml3_params
    fixed = {"learning_rate": 0.03, "meta_lr": 0.003, "n_steps": 50, "n_epochs": 1}
    assert sample_ml3_params(optuna.trial.FixedTrial({**fixed, "batch_size": 100}), 2, 8, {})["batch_size"] == 100
    with pytest.raises(optuna.TrialPruned):  # 400 does not divide a rollout of 50 * 1 samples
        sample_ml3_params(optuna.trial.FixedTrial({**fixed, "batch_size": 400}), 2, 1, {})


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_generated_hyperparameters_are_the_recipes(env_id):
    recipe = load_recipe(env_id)
    ml3 = recipe["ml3"]
    for algo in ("ml3", "ppo", "trpo"):
        entry = zoo_hyperparams(algo)[env_id]
        section = ml3 if algo == "ml3" else recipe[algo]
        assert entry["n_envs"] == section["n_envs"] and entry["policy"] == "MlpPolicy", algo
        assert eval(entry["policy_kwargs"]) == policy_kwargs_for(ml3["meta_train_net_arch"]), algo
        normalize = section["normalize"]
        assert (eval(entry["normalize"]) if isinstance(entry["normalize"], str) else entry["normalize"]) == normalize
        expected = ml3["meta_train"] if algo == "ml3" else {k: v for k, v in section.items()
                                                             if k not in ("n_envs", "normalize")}
        assert {k: entry[k] for k in expected} == expected, algo
    train = zoo_entry("ml3", env_id)
    assert train["meta_train"] is True and train["env_kwargs"] == {"task_split": "train"}
    assert train["n_timesteps"] == ml3["meta_train_timesteps"]
    (callback,) = train["callback"]
    assert list(callback.values()) == [{"env_id": env_id, **ml3["meta_validation"]}]
    for algo in ("ppo", "trpo"):  # the held-out goals, the comparison's budget
        entry = zoo_entry(algo, env_id)
        assert entry["env_kwargs"] == {"task_split": "test"}, algo
        assert entry["n_timesteps"] == recipe["compare"]["total_timesteps"], algo


def test_argv_sets_the_train_and_eval_splits(tmp_path):
    argv = train_argv(["--algo", "ppo", "--env", ENV], str(tmp_path))
    assert _kwargs(argv, "--eval-env-kwargs") == ["task_split:'test'"] and "--env-kwargs" not in argv
    with open(argv[argv.index("--conf-file") + 1]) as f:
        assert yaml.safe_load(f) == {ENV: zoo_entry("ppo", ENV)}
    argv = train_argv(["--algo=ml3", "--env", ENV, "--env-kwargs", "reset_noise_scale:0.1"], str(tmp_path))
    assert _kwargs(argv, "--env-kwargs") == ["task_split:'train'", "reset_noise_scale:0.1"]
    assert _kwargs(argv, "--eval-env-kwargs") == _kwargs(argv, "--env-kwargs")
    argv = train_argv(["--algo", "trpo", "--env", ENV, "--eval-env-kwargs", "task_split:'all'"], str(tmp_path))
    assert _kwargs(argv, "--eval-env-kwargs") == ["task_split:'all'"]
    own = ["--algo", "ppo", "--env", ENV, "--conf-file", "mine.yml"]  # your own file: nothing added
    assert train_argv(own, str(tmp_path)) == [*own, "--gym-packages", "sb3_ml3"]
    with pytest.raises(ValueError, match="PointmassGoal-v0, ReacherGoal-v0"):
        train_argv(["--algo", "ml3", "--env", "CartPole-v1"], str(tmp_path))
    with pytest.raises(ValueError, match="--algo ml3"):
        train_argv(["--algo", "ppo", "--env", ENV, "--meta-test-loss", "x.zip"], str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Meta-train one first"):
        train_argv(["--algo", "ml3", "--env", ENV, "--meta-test-loss", str(tmp_path / "none.zip")], str(tmp_path))


def test_enjoy_defaults_to_the_runs_split(tmp_path):
    params = tmp_path / "ppo" / f"{ENV}_3" / ENV
    params.mkdir(parents=True)
    (params / "config.yml").write_text(yaml.dump({"env_kwargs": {"reset_noise_scale": 0.1}}))
    argv = ["--algo", "ppo", "--env", ENV, "-f", str(tmp_path)]
    assert _kwargs(enjoy_argv(argv), "--env-kwargs") == ["task_split:'test'"]  # saved without a split
    (params / "config.yml").write_text(yaml.dump({"env_kwargs": {"task_split": "all"}}))
    assert "--env-kwargs" not in enjoy_argv(argv)  # rl-zoo3 reuses the saved split


def _spy_envs(monkeypatch) -> list[tuple[bool, dict]]:
    """Record (eval env?, env kwargs) of every env rl-zoo3's ExperimentManager builds."""
    from rl_zoo3.exp_manager import ExperimentManager

    built: list[tuple[bool, dict]] = []
    create = ExperimentManager.create_envs

    def spy(self, n_envs, eval_env=False, no_log=False):
        built.append((eval_env, dict(self.eval_env_kwargs if eval_env else self.env_kwargs)))
        return create(self, n_envs, eval_env=eval_env, no_log=no_log)

    monkeypatch.setattr(ExperimentManager, "create_envs", spy)
    return built


def _enjoy(monkeypatch, algo: str) -> dict:
    """``enjoy --no-render -n 100`` of the latest run; returns the env kwargs it played with."""
    import rl_zoo3.enjoy

    seen: dict = {}
    create = rl_zoo3.enjoy.create_test_env

    def spy(*args, **kwargs):
        seen.update(kwargs["env_kwargs"])
        return create(*args, **kwargs)

    monkeypatch.setattr(rl_zoo3.enjoy, "create_test_env", spy)
    assert main(["enjoy", "--algo", algo, "--env", ENV, "-f", "logs", "--no-render", "-n", "100",
                 "--num-threads", "1"]) == 0
    return seen


def test_ml3_meta_train_enjoy_meta_test_round_trip(tmp_path, monkeypatch):
    from sb3_ml3.meta_loss import MetaLoss

    monkeypatch.chdir(tmp_path)
    built = _spy_envs(monkeypatch)
    (callback,) = zoo_entry("ml3", ENV)["callback"]
    (name, kwargs), = callback.items()
    quick = {**kwargs, "eval_freq": 400, "eval_at_updates": [1], "n_goals": 2}  # validates at 400 and 800 steps
    assert main(["--algo", "ml3", *TINY, "-params", f"callback:[{{{name!r}: {quick!r}}}]"]) == 0
    run = tmp_path / "logs" / "ml3" / f"{ENV}_1"
    assert (run / f"{ENV}.zip").is_file() and not list(tmp_path.glob("*.zip"))  # nothing in the cwd
    loss = MetaLoss.load(run / META_LOSS_FILE)
    assert [steps for steps, _ in loss.metadata["meta_validation"]["history"]] == [400, 800]
    assert {eval_env: kw["task_split"] for eval_env, kw in built} == {False: "train", True: "train"}
    assert _enjoy(monkeypatch, "ml3")["task_split"] == "train"

    built.clear()
    assert main(["train", "--algo", "ml3", *TINY, "--meta-test-loss", str(run / META_LOSS_FILE)]) == 0
    with open(tmp_path / "logs" / "ml3" / f"{ENV}_2" / ENV / "config.yml") as f:
        config = yaml.load(f, Loader=yaml.UnsafeLoader)
    assert config["meta_train"] is False and config["meta_loss"] == str(run / META_LOSS_FILE)
    assert {k: config[k] for k in load_recipe(ENV)["ml3"]["meta_test"]} == load_recipe(ENV)["ml3"]["meta_test"]
    assert {eval_env: kw["task_split"] for eval_env, kw in built} == {False: "test", True: "test"}
    assert _enjoy(monkeypatch, "ml3")["task_split"] == "test"


def test_ppo_trains_and_evaluates_on_the_test_split_then_enjoy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = _spy_envs(monkeypatch)
    assert main(["--algo", "ppo", *TINY, "-params", "n_steps:50", "batch_size:100"]) == 0
    assert {eval_env: kw["task_split"] for eval_env, kw in built} == {False: "test", True: "test"}
    params = tmp_path / "logs" / "ppo" / f"{ENV}_1" / ENV
    assert (params / "vecnormalize.pkl").is_file() and os.path.isfile(params.parent / f"{ENV}.zip")
    assert _enjoy(monkeypatch, "ppo")["task_split"] == "test"
