"""``ml3 mbrl``'s per-seed store: finished seeds are written at once, read back by ``--resume`` only under the same
settings, and seeds run by separate calls into one ``--out`` combine into one ``results.json``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from sb3_ml3.model_based import mbrl_cli
from sb3_ml3.model_based.mbrl_config import MBRLConfig
from sb3_ml3.model_based.mbrl_store import SEEDS_DIR, SeedStore

TINY = ["--envs", "PointmassGoal-v0", "--horizon", "10", "--n-outer", "2", "--model-every", "2", "--test-updates",
        "2", "--no-progress"]


def _tiny(monkeypatch):
    """A seconds-long run: few random episodes, one model epoch, two goals, one grid entry."""
    monkeypatch.setattr(mbrl_cli, "QUICK", dict(random_episodes=6, model_epochs=1, n_test_goals=2, batch_goals=2,
                                                 task_grid=(("adam", 0.01),)))


def _main(args):
    from sb3_ml3.cli import main

    main(["mbrl", "--quick", *TINY, *args])


def _count_runs(monkeypatch):
    calls = []
    original = mbrl_cli.meta_train_with_restarts

    def counting(env_id, config, seed, progress):
        calls.append(seed)
        return original(env_id, config, seed, progress)

    monkeypatch.setattr(mbrl_cli, "meta_train_with_restarts", counting)
    return calls


def test_seeds_run_apart_combine_and_resume_reruns_nothing(tmp_path, monkeypatch):
    _tiny(monkeypatch)
    calls = _count_runs(monkeypatch)
    out = str(tmp_path / "run")
    _main(["--seeds", "0", "--resume", "--out", out])
    _main(["--seeds", "1", "--resume", "--out", out])  # a second process on the same folder
    assert calls == [0, 1]
    assert sorted(os.listdir(os.path.join(out, SEEDS_DIR))) == ["PointmassGoal_seed0.json", "PointmassGoal_seed0.zip",
                                                               "PointmassGoal_seed1.json", "PointmassGoal_seed1.zip"]
    alone = {s: json.load(open(os.path.join(out, SEEDS_DIR, f"PointmassGoal_seed{s}.json")))["row"] for s in (0, 1)}
    _main(["--seeds", "0", "1", "--resume", "--out", out])  # combine: reads both, trains nothing
    assert calls == [0, 1]
    results = json.load(open(os.path.join(out, "results.json")))
    rows = results["envs"]["PointmassGoal-v0"]["per_seed"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert [r["seed"] for r in results["seeds_read_back"]] == [0, 1]  # its wall time is the combining call's only
    for row in rows:
        assert row["test"]["ml3"]["final_distance"] == alone[row["seed"]]["test"]["ml3"]["final_distance"]
    curves = [np.mean(alone[s]["test"]["ml3"]["final_distance"], axis=1) for s in (0, 1)]
    summary = results["envs"]["PointmassGoal-v0"]["summary"]
    np.testing.assert_allclose(summary["curve_ml3"], np.mean(curves, axis=0))
    # the combined folder's meta-losses are the ones each seed trained
    from sb3_ml3.model_based.mbrl_nets import LossAndRate

    for s in (0, 1):
        a = LossAndRate.load(os.path.join(out, f"meta_loss_PointmassGoal_seed{s}.zip")).state_dict()
        b = LossAndRate.load(os.path.join(out, SEEDS_DIR, f"PointmassGoal_seed{s}.zip")).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def _refused(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        _main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_a_folder_with_finished_seeds_is_refused_without_resume_and_other_settings_are_refused(
        tmp_path, monkeypatch, capsys):
    _tiny(monkeypatch)
    calls = _count_runs(monkeypatch)
    out = str(tmp_path / "run")
    _main(["--seeds", "0", "--out", out])
    os.remove(os.path.join(out, "results.json"))  # as if killed before the end: the finished seed still counts
    assert "already holds results (seeds); pass --resume" in _refused(["--seeds", "0", "--out", out], capsys)
    assert "ran with other settings (inner_steps differ)" in _refused(
        ["--seeds", "0", "--resume", "--inner-steps", "2", "--out", out], capsys)
    # a seed written before a setting existed (its config lacks the key) ran with that setting's default: read back
    # while the setting stays at its default, refused when it is set otherwise
    row_path = os.path.join(out, SEEDS_DIR, "PointmassGoal_seed0.json")
    with open(row_path) as f:
        saved = json.load(f)
    del saved["config"]["val_goals"]
    with open(row_path, "w") as f:
        json.dump(saved, f)
    _main(["--seeds", "0", "--resume", "--out", out])
    assert calls == [0]
    os.remove(os.path.join(out, "results.json"))
    assert "ran with other settings (val_goals differ)" in _refused(
        ["--seeds", "0", "--resume", "--val-goals", "3", "--out", out], capsys)
    _main(["--seeds", "0", "--force", "--out", out])  # afresh: runs the seed again
    assert calls == [0, 0]
    # a results.json of other settings is never replaced by --resume (only by --force)
    with open(os.path.join(out, "results.json")) as f:
        before = f.read()
    assert "holds results of other settings (inner_steps differ)" in _refused(
        ["--seeds", "1", "--resume", "--inner-steps", "2", "--out", out], capsys)
    with open(os.path.join(out, "results.json")) as f:
        assert f.read() == before
    assert calls == [0, 0]


def test_a_torn_or_crafted_seed_file_gets_a_clear_error(tmp_path):
    config = MBRLConfig()
    store = SeedStore(tmp_path, config, resume=True)
    row_path, loss_path = store.paths("PointmassGoal-v0", 3)
    assert store.load("PointmassGoal-v0", 3) is None  # not stored yet
    os.makedirs(os.path.dirname(row_path))
    with open(row_path, "w") as f:
        f.write('{"env_id": "PointmassGoal-v0", "seed": 3, "conf')
    with pytest.raises(ValueError, match="not a finished seed"):
        store.load("PointmassGoal-v0", 3)
    with open(row_path, "w") as f:
        json.dump({"env_id": "PointmassGoal-v0", "seed": 3, "config": ["not", "a", "dict"], "row": {}}, f)
    with pytest.raises(ValueError, match="not a finished seed"):
        store.load("PointmassGoal-v0", 3)
    with open(row_path, "w") as f:
        json.dump({"env_id": "PointmassGoal-v0", "seed": 4, "config": store.config, "row": {}}, f)
    with pytest.raises(ValueError, match="another env or seed"):
        store.load("PointmassGoal-v0", 3)
    with open(row_path, "w") as f:
        json.dump({"env_id": "PointmassGoal-v0", "seed": 3, "config": store.config, "row": {}}, f)
    with pytest.raises(ValueError, match="no meta-loss"):
        store.load("PointmassGoal-v0", 3)
    assert SeedStore(tmp_path, config, resume=False).load("PointmassGoal-v0", 3) is None  # not resuming: run it


def test_read_seed_rebuilds_the_settings_row_and_loss_of_any_finished_seed(tmp_path, monkeypatch):
    from sb3_ml3.model_based.mbrl_config import config_dict, config_from_dict
    from sb3_ml3.model_based.mbrl_store import read_seed

    config = MBRLConfig(task_policy_features=("state", "arm-frame"), model_hidden=(16, 8), target_bound=0.9)
    assert config_from_dict(json.loads(json.dumps(config_dict(config)))) == config  # JSON's lists back to tuples
    with pytest.raises(ValueError, match="another version"):
        config_from_dict({**config_dict(config), "warp_drive": 1})
    with pytest.raises(ValueError, match="val_every"):
        config_from_dict({**config_dict(config), "val_every": -1})  # checked as on construction
    _tiny(monkeypatch)
    out = str(tmp_path / "run")
    _main(["--seeds", "1", "--out", out, "--loss-time-weights", "late"])
    saved, row, meta_loss = read_seed(out, "PointmassGoal-v0", 1)  # whatever flags run now
    assert saved.loss_time_weights == "late" and saved.horizon == 10 and saved.n_outer == 2
    assert row["seed"] == 1 and meta_loss.time_steps == 10
    stored = json.load(open(os.path.join(out, SEEDS_DIR, "PointmassGoal_seed1.json")))["row"]
    assert row["test"]["ml3"]["final_distance"] == stored["test"]["ml3"]["final_distance"]
    with pytest.raises(FileNotFoundError, match="no finished seed 2"):
        read_seed(out, "PointmassGoal-v0", 2)
    with open(os.path.join(out, SEEDS_DIR, "PointmassGoal_seed1.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="not a finished seed"):
        read_seed(out, "PointmassGoal-v0", 1)
