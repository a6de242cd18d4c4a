"""rl-zoo3 integration (optional dependency): ML3 trains through rl-zoo3's train with the shipped yaml."""

import os

import pytest

pytest.importorskip("rl_zoo3")

from sb3_ml3.rl_zoo import hyperparams_file, main, register  # noqa: E402


def test_ml3_is_registered_and_yaml_files_are_shipped():
    from sb3_ml3 import ML3

    assert register()["ml3"] is ML3
    assert hyperparams_file("ml3").endswith(os.path.join("zoo", "ml3.yml"))
    assert hyperparams_file("ppo") is not None and hyperparams_file("sac") is None


def test_meta_train_then_meta_test_through_rl_zoo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--env", "PointmassGoal-v0", "-n", "400", "-f", "logs", "--eval-freq", "-1", "--seed", "0",
              "--num-threads", "1"]
    assert main(["--algo", "ml3", *common]) == 0
    loss = tmp_path / "ml3_meta_loss_PointmassGoal-v0.zip"
    assert loss.is_file() and (tmp_path / "logs" / "ml3" / "PointmassGoal-v0_1" / "PointmassGoal-v0.zip").is_file()
    assert main(["--algo", "ml3", *common, "-params", "meta_train:False", f"meta_loss:'{loss}'",
                 "--env-kwargs", "task_split:'test'"]) == 0
    assert (tmp_path / "logs" / "ml3" / "PointmassGoal-v0_2" / "PointmassGoal-v0.zip").is_file()


def test_the_shipped_yaml_mirrors_compare_settings():
    """The rl-zoo3 recipe per env is ml3 compare's meta-training recipe (one recipe, two front ends)."""
    import yaml

    from sb3_ml3.compare import ML3_SETTINGS
    from sb3_ml3.rl_zoo import hyperparams_file

    with open(hyperparams_file("ml3")) as f:
        zoo = yaml.safe_load(f)
    assert set(zoo) == set(ML3_SETTINGS)
    for env_id, settings in ML3_SETTINGS.items():
        entry = zoo[env_id]
        assert entry["n_timesteps"] == settings["meta_train_timesteps"] and entry["n_envs"] == settings["n_envs"], env_id
        for key, value in settings["meta_train"].items():
            expected = {k: list(v) for k, v in value.items()} if key == "meta_loss_kwargs" else value
            expected = list(expected) if isinstance(expected, tuple) else expected
            assert entry[key] == expected, (env_id, key)
