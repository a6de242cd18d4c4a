"""Smoke test of ``benchmarks/ppo_family.py``: the PPO-family loss at zero correction beside SB3's PPO."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sb3_ml3 import MetaLoss

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ppo_family.py"


def _script():
    """benchmarks/ppo_family.py as a module."""
    spec = importlib.util.spec_from_file_location("ppo_family", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pointmass_target_loss() -> MetaLoss:
    """A small target-correction loss with the inputs and metadata of the script's fresh PointmassGoal loss."""
    fresh = _script().fresh_loss("PointmassGoal-v0")
    return MetaLoss(fresh.spec, hidden_sizes=(8,), surrogate="ppo", correction="target", metadata=fresh.metadata)


def test_meta_test_writes_both_rows_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "mt.json"
    cmd = [sys.executable, str(SCRIPT), "meta-test", "--env", "PointmassGoal-v0", "--timesteps", "2048",
           "--seeds", "0", "--out", str(out), "--loss", "fresh", "ppo", "--no-compile"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["runs"]] == ["fresh", "ppo"]
    fresh, ppo = result["runs"]
    assert fresh["curve"][0] == ppo["curve"][0]  # the same initial policy and goals
    assert fresh["timesteps"] == ppo["timesteps"] == 2048
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "--force" in again.stderr
    # choosing among losses on train-split goals: other goals, trained on the train region
    train = tmp_path / "train.json"
    subprocess.run(cmd[:-6] + ["--out", str(train), "--loss", "fresh", "--no-compile", "--split", "train",
                               "--update", "auto"], check=True, capture_output=True, timeout=600)
    chosen = json.loads(train.read_text())
    assert chosen["split"] == "train" and result["split"] == "test"
    assert chosen["runs"][0]["goals"] != fresh["goals"] and chosen["runs"][0]["timesteps"] == 2048
    # the summary keeps a loss's runs on different splits apart, best final first
    table = subprocess.run([sys.executable, str(SCRIPT), "summary", str(out), str(train)], check=True,
                           capture_output=True, text=True, timeout=600).stdout.splitlines()
    rows = {line.split()[0] + " " + line.split()[1]: float(line.split()[2]) for line in table[1:]}
    assert set(rows) == {"fresh [test]", "ppo [test]", "fresh [train]"}
    assert abs(rows["fresh [test]"] - fresh["curve"][-1]) <= 1e-3 * abs(fresh["curve"][-1])  # 4 significant digits
    finals = [float(line.split()[2]) for line in table[1:]]
    assert finals == sorted(finals, reverse=True)


def test_meta_test_on_the_outside_split_trains_and_scores_on_goals_outside_both_splits_radii(tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "outside.json"
    subprocess.run([sys.executable, str(SCRIPT), "meta-test", "--env", "PointmassGoal-v0", "--timesteps", "2048",
                    "--seeds", "0", "--out", str(out), "--loss", "ppo", "--split", "outside", "--references"],
                   check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    run = result["runs"][0]
    refs = result["references"]  # scored on the same goals: the oracle far above doing nothing
    assert set(refs) == {"zero_action", "random", "best_constant_action", "oracle"}
    assert refs["oracle"]["metric"] > refs["best_constant_action"]["metric"] >= refs["zero_action"]["metric"]
    assert refs["oracle"]["success_rate"] == 1.0 and len(refs["zero_action"]["per_goal"]) == 10
    goals = np.asarray(run["goals"])
    np.testing.assert_array_equal(goals, _script().outside_goals("PointmassGoal-v0", 10))  # the zero-shot goals
    radius = np.linalg.norm(goals, axis=1)
    assert ((radius < 0.5) | (radius > 2.0)).all() and (radius < 0.5).sum() == 5
    with pytest.raises(SystemExit, match="no 'outside' split"):
        _script().outside_goals("AntGoal-v0", 10)


def test_the_fresh_loss_is_the_surrogate_family_at_zero_correction() -> None:
    loss = _script().fresh_loss("ReacherGoal-v0")
    assert loss.surrogate == "ppo" and all(float(p.abs().sum()) == 0 for p in loss.net[-1].parameters())
    assert loss.metadata["inner_optimizer"] == "adam"


def test_meta_test_refuses_to_overwrite_earlier_clips(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    earlier = clips / "clip_ppo_seed0.gif"
    earlier.write_bytes(b"a user's earlier clip")
    cmd = [sys.executable, str(SCRIPT), "meta-test", "--env", "PointmassGoal-v0", "--timesteps", "2048", "--seeds", "0",
           "--out", str(tmp_path / "mt.json"), "--loss", "ppo", "--clip-dir", str(clips)]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert earlier.read_bytes() == b"a user's earlier clip" and not (tmp_path / "mt.json").exists()


def test_meta_training_continues_a_target_loss_with_the_policy_age_as_a_new_input(tmp_path: Path) -> None:
    """``--init-from`` starts from a loss (widened to ``--extra-inputs`` with zero weights), so its validation at the
    start is the earlier loss's at the end; ``--extra-inputs`` makes the target read the policy's age."""
    base = [sys.executable, str(SCRIPT), "meta-train", "--env", "PointmassGoal-v0", "--timesteps", "4096",
            "--correction", "target", "--eval-freq", "4096", "--eval-at-updates", "1", "--no-compile"]
    subprocess.run(base + ["--out", str(tmp_path / "a")], check=True, capture_output=True, timeout=600)
    first = MetaLoss.load(tmp_path / "a" / "meta_loss_seed0.zip")
    subprocess.run(base + ["--out", str(tmp_path / "b"), "--extra-inputs", "policy_age", "--init-from",
                           str(tmp_path / "a" / "meta_loss_seed0.zip")], check=True, capture_output=True, timeout=600)
    start = MetaLoss.load(tmp_path / "b" / "init_meta_loss_seed0.zip")
    assert start.correction_fields == ("obs", "goal", "policy_age")
    assert torch.equal(start.net[0].weight[:, :-1], first.net[0].weight) and not start.net[0].weight[:, -1].any()
    second = MetaLoss.load(tmp_path / "b" / "meta_loss_seed0.zip")
    assert second.metadata["meta_inputs"][-1] == "policy_age" and second.metadata["initialised_from"] == "meta_loss_seed0.zip"
    history_a = first.metadata["meta_validation"]["history"]
    history_b = second.metadata["meta_validation"]["history"]
    assert abs(history_b[0][1] - history_a[-1][1]) < 0.05 * abs(history_a[-1][1])
    refused = subprocess.run(base + ["--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "b" / "meta_loss_seed0.zip")],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "must extend them" in refused.stderr


def test_pull_until_turns_a_target_loss_into_ppos_update_from_then_on(tmp_path: Path) -> None:
    """A strong target pull changes the run; ``--pull-until 0`` turns it off before the first update, so the run
    is the family at zero correction (``fresh``), to float rounding."""
    target = _pointmass_target_loss()
    with torch.no_grad():
        target.net[-1].bias.copy_(torch.tensor([3.0, 1.0, -1.0]))  # w = softplus(3) ~ 3, towards (1, -1)
    target.save(tmp_path / "target.zip")
    base = [sys.executable, str(SCRIPT), "meta-test", "--env", "PointmassGoal-v0", "--timesteps", "4096", "--seeds", "0",
            "--no-compile"]  # two rollouts: the last evaluation follows one update
    runs = {}
    for label, extra in (("pulled", ["--loss", str(tmp_path / "target.zip")]),
                         ("switched", ["--loss", str(tmp_path / "target.zip"), "fresh", "--pull-until", "0"])):
        subprocess.run(base + ["--out", str(tmp_path / f"{label}.json")] + extra, check=True, capture_output=True,
                       timeout=600)
        runs[label] = json.loads((tmp_path / f"{label}.json").read_text())["runs"]
    (pulled,), (switched, plain) = runs["pulled"], runs["switched"]
    assert switched["name"].endswith("pull until 0") and plain["name"] == "fresh"
    assert abs(switched["curve"][-1] - plain["curve"][-1]) < 1e-3 < abs(pulled["curve"][-1] - plain["curve"][-1])


def test_derive_sets_a_target_losss_bound_and_pull_horizon_and_keeps_its_weights(tmp_path: Path) -> None:
    source = _pointmass_target_loss()
    with torch.no_grad():
        for p in source.net.parameters():
            p.normal_(std=2.0)
    source.save(tmp_path / "source.zip")
    cmd = [sys.executable, str(SCRIPT), "derive", str(tmp_path / "source.zip"), "--out", str(tmp_path / "gated.zip")]
    subprocess.run(cmd + ["--extra-inputs", "policy_age", "--target-bound", "1", "--pull-updates", "5", "--pull-scale",
                          "4"], check=True, capture_output=True, timeout=600)
    gated = MetaLoss.load(tmp_path / "gated.zip")
    assert (gated.target_bound, gated.pull_updates, gated.pull_scale, gated.correction_fields) == (
        1.0, 5, 4.0, ("obs", "goal", "policy_age"))
    assert gated.metadata["meta_inputs"][-1] == "policy_age" and gated.metadata["derived_from"]["file"] == "source.zip"
    fields = {name: torch.randn(6, width) for name, width in source.spec.fields}
    young = dict(fields, policy_age=torch.zeros(6))
    torch.testing.assert_close(gated.pull_target(young)[0], torch.tanh(source.pull_target(fields)[0]))
    torch.testing.assert_close(gated.pull_target(young)[1], 4 * source.pull_target(fields)[1])
    refused = subprocess.run(cmd[:-1] + [str(tmp_path / "other.zip"), "--pull-updates", "5"], capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "reads policy_age" in refused.stderr and not (tmp_path / "other.zip").exists()


def test_ratios_are_ppos_samples_over_the_runs_on_the_seeds_both_have(tmp_path: Path) -> None:
    schedule = [0, 10, 20, 30, 40, 50]

    def write(name: str, runs: list[tuple[str, int, list[float]]]) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"schedule": schedule, "runs": [{"name": n, "seed": s, "curve": c} for n, s, c in runs]}))
        return str(path)

    ppo = write("ppo.json", [("ppo", seed, [-10, -10, -10, -2, -2, -2]) for seed in (0, 1, 2)])
    ours = write("ours.json", [("dir/loss.zip", seed, [-10, -2, -2, -2, -2, -2]) for seed in (1, 2, 7)])
    out = subprocess.run([sys.executable, str(SCRIPT), "ratios", ours, "--reference", ppo], check=True,
                         capture_output=True, text=True, timeout=600).stdout.splitlines()
    # m_0 = -10, m_ref = -2: 80% of the way is -3.6, crossed at 8 samples by the loss and at 28 by PPO
    row = out[1].split()
    assert row[0] == "loss.zip" and row[1] == "1,2" and row[-3:] == ["8", "28", "3.5"]
    # another reference by its name (e.g. PPO with a warm step size): it reaches -3.6 at 18 samples
    warm = write("warm.json", [("ppo warm", seed, [-10, -10, -2, -2, -2, -2]) for seed in (1, 2)])
    out = subprocess.run([sys.executable, str(SCRIPT), "ratios", ours, "--reference", warm, "--reference-name",
                          "ppo warm"], check=True, capture_output=True, text=True, timeout=600).stdout.splitlines()
    assert out[1].split()[-3:] == ["8", "18", "2.25"]
    refused = subprocess.run([sys.executable, str(SCRIPT), "ratios", ours, "--reference", warm], capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "'ppo'" in refused.stderr and "ppo warm" in refused.stderr


def test_warm_learning_rate_gives_ppo_a_step_size_for_its_first_updates_then_its_own() -> None:
    """The control for pull_learning_rate: SB3's PPO takes its first K updates at the warm step size, then the
    recipe's; nonsense settings are refused."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_ml3.experiments.probes import WarmLearningRate

    model = PPO("MlpPolicy", make_vec_env("PointmassGoal-v0", n_envs=2, seed=0), n_steps=16, batch_size=32, n_epochs=1,
                learning_rate=1e-4, policy_kwargs={"net_arch": [8]}, seed=0)
    rates = []
    update = model._update_learning_rate

    def recording(optimizers):
        update(optimizers)
        rates.append(model.policy.optimizer.param_groups[0]["lr"])

    model._update_learning_rate = recording
    model.learn(5 * 32, callback=WarmLearningRate(3e-3, 2))
    assert rates == pytest.approx([3e-3, 3e-3, 1e-4, 1e-4, 1e-4])
    for bad in ((0.0, 2), (float("nan"), 2), (1e-3, 0), (1e-3, 2.5), (1e-3, True)):
        with pytest.raises(ValueError, match="WarmLearningRate"):
            WarmLearningRate(*bad)
