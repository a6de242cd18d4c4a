"""benchmarks/bc_baseline.py: BC of a saved expert writes its results, its loss goes down, and it refuses to overwrite."""

import importlib.util
import json
import os

import pytest
from stable_baselines3 import PPO

from sb3_ml3.experiments import make_train_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = importlib.util.spec_from_file_location("bc_baseline", os.path.join(ROOT, "benchmarks", "bc_baseline.py"))
bc_baseline = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bc_baseline)


def test_bc_of_a_saved_expert(tmp_path, capsys):
    expert = tmp_path / "expert.zip"
    PPO("MlpPolicy", make_train_env("PointmassGoal-v0", 2, 0, split="train"), n_steps=128, batch_size=64,
        seed=0).learn(512).save(expert)
    out = tmp_path / "bc"
    argv = ["PointmassGoal-v0", "--expert", str(expert), "--samples", "800", "--epochs", "2", "--seeds", "0", "1",
            "--out", str(out)]
    bc_baseline.main([*argv, "--dagger-rounds", "1", "--dagger-samples", "160"])
    printed = capsys.readouterr().out
    assert "expert on the held-out goals" in printed and "seed 1 epoch 4" in printed
    with open(out / "results.json") as f:
        results = json.load(f)
    assert results["samples_used"] == {"expert_env_steps": 800, "dagger_env_steps_per_seed": [160, 160],
                                       "total_per_seed": [960, 960]}
    assert set(results["final"]) == {"metric", "final_distance", "success_rate", "saturation"}
    assert len(results["final"]["metric"]["per_seed"]) == 2 and "bc_baseline.py" in results["command"]
    assert len(results["expert_evaluation"]["metric"]) == 10
    for run in results["runs"].values():
        curve = run["curve"]
        assert [p["epoch"] for p in curve] == [0, 1, 2, 3, 4] and curve[-1]["gradient_steps"] == 4 * 4
        assert curve[-1]["data_size"] == 960
        assert curve[2]["bc_loss"] < curve[0]["bc_loss"]  # the loss goes down on the expert's data
    with pytest.raises(SystemExit):  # an --out with results is refused without --force
        bc_baseline.main(argv)
    assert "already holds results" in capsys.readouterr().err
