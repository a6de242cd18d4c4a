"""benchmarks/meta_train_probe.py: a stopped probe resumes from its checkpoint and refuses other settings."""

import json
import os
import subprocess
import sys

from stable_baselines3 import PPO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "benchmarks", "meta_train_probe.py")
VALIDATION = json.dumps({"eval_freq": 800, "eval_at_updates": [1], "n_goals": 2})


def _probe(out, timesteps, *extra):
    return subprocess.run([sys.executable, PROBE, "PointmassGoal-v0", "--out", str(out), "--timesteps", str(timesteps),
                           "--validation", VALIDATION, "--print-every", "2", *extra],
                          capture_output=True, text=True, timeout=300)


def _validations(out):
    with open(os.path.join(out, "validation.jsonl")) as f:
        return [json.loads(line)["steps"] for line in f]


def test_probe_prints_lifetime_progress_and_resumes(tmp_path):
    out = tmp_path / "probe"
    first = _probe(out, 1_600)
    assert first.returncode == 0, first.stderr
    assert "episode task reward by age: first" in first.stdout and "validation at 800 steps" in first.stdout
    assert _validations(out) == [800, 1600]
    second = _probe(out, 2_400)  # the same command with a larger budget continues the run
    assert second.returncode == 0, second.stderr
    assert "resuming at 1600 steps" in second.stdout and _validations(out) == [800, 1600, 2400]
    assert os.path.exists(out / "best_meta_loss.zip") and os.path.exists(out / "final_meta_loss.zip")
    other = _probe(out, 3_200, "--meta-train", '{"meta_lr": 0.01}')
    assert other.returncode != 0 and "other settings" in other.stderr

    warm = tmp_path / "warm"  # a new probe that starts from the first one's loss
    started = _probe(warm, 1_600, "--init-meta-loss", str(out / "final_meta_loss.zip"))
    assert started.returncode == 0, started.stderr
    assert "meta-training starts from" in started.stdout and _validations(warm) == [800, 1600]
    cold = _probe(warm, 2_400)  # resuming it without its starting loss is another setting
    assert cold.returncode != 0 and "other settings" in cold.stderr
    missing = _probe(tmp_path / "none", 800, "--init-meta-loss", str(tmp_path / "nothing.zip"))
    assert missing.returncode != 0 and "no file" in missing.stderr


def test_an_expert_from_train_expert_shapes_a_probe(tmp_path):
    """benchmarks/train_expert.py saves a PPO expert that the probe meta-trains an imitation-shaped loss with."""
    expert = tmp_path / "expert.zip"
    trained = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_expert.py"), "PointmassGoal-v0",
                              "--out", str(expert), "--timesteps", "2048", "--eval-every", "1024"],
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert "1024 steps: task metric on train goals" in trained.stdout  # the recipe's PPO: 2048-step rollouts and "on held-out goals" in trained.stdout
    assert expert.exists()
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_expert.py"), "PointmassGoal-v0",
                              "--out", str(expert), "--timesteps", "4096", "--eval-every", "1024", "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # continues the saved expert on its own step grid
    assert "resuming at 2048 steps" in resumed.stdout
    assert [int(line.split()[0]) for line in resumed.stdout.splitlines() if "task metric" in line] == [3072, 4096]
    assert PPO.load(expert).num_timesteps == 4096
    meta_train = json.dumps({"task_objective": "imitation", "expert": str(expert),
                             "meta_loss_kwargs": {"quadratic": ["mean"]}})
    probe = _probe(tmp_path / "probe", 1_600, "--meta-train", meta_train)
    assert probe.returncode == 0, probe.stderr
    assert _validations(tmp_path / "probe") == [800, 1600]
    students = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "imitation_students.py"), "PointmassGoal-v0",
                               "--expert", str(expert), "--checkpoint", str(tmp_path / "probe" / "checkpoint.zip"),
                               "--updates", "1", "2"], capture_output=True, text=True, timeout=300)
    assert students.returncode == 0, students.stderr
    errors = [float(line.split("error ")[1].split()[0]) for line in students.stdout.splitlines() if "plain BC" in line]
    assert len(errors) == 4 and errors[-1] < errors[0]  # behavioural cloning approaches the expert
    assert students.stdout.count("learned loss: error") == 2
    targets = [float(line.split("target error ")[1].split()[0]) for line in students.stdout.splitlines()
               if "learned loss" in line]
    assert len(targets) == 2 and all(0 <= t < 100 for t in targets)  # the quadratic loss's target, measured
    assert "on ml3 compare's held-out goals" in students.stdout
