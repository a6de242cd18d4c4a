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
