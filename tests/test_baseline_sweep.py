"""Smoke test of ``benchmarks/baseline_sweep.py``: one tiny PPO run writes a sound JSON and a rerun skips it."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "baseline_sweep.py"


def _load_script() -> ModuleType:
    """Import the benchmark script as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("baseline_sweep", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_config_writes_curve_and_resumes(tmp_path: Path) -> None:
    sweep = _load_script()
    argv = ["--env", "PointmassGoal-v0", "--out", str(tmp_path), "--configs", "ppo_D",
            "--timesteps", "1000", "--eval-every", "512"]
    (path,) = sweep.main(argv)
    assert path == str(tmp_path / "PointmassGoal-v0" / "ppo_ppo_D_seed0.json")
    result = json.loads(Path(path).read_text())
    curve = result["curve"]
    assert curve["steps"] == [0, 512, 1000]  # step 0, every 512 steps, and the budget
    assert len(curve["mean_metric"]) == len(curve["per_goal_metric"]) == 3
    assert all(len(goals) == 10 for goals in curve["per_goal_metric"])
    assert all(math.isfinite(v) for v in curve["mean_metric"])
    assert math.isfinite(result["wall_time_s"]) and result["env_steps_per_s"] > 0
    assert result["hyperparameters"]["learning_rate"] == 1e-3 and result["task_split"] == "train"
    assert (tmp_path / "PointmassGoal-v0" / "summary.md").read_text().count("| ppo_D |") == 1

    mtime = os.stat(path).st_mtime_ns
    assert sweep.main(argv) == [path]  # exists: skipped, not retrained
    assert os.stat(path).st_mtime_ns == mtime


def test_rejects_non_positive_numbers() -> None:
    sweep = _load_script()
    with pytest.raises(SystemExit):
        sweep.main(["--env", "PointmassGoal-v0", "--out", "unused", "--timesteps", "0"])
