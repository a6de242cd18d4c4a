"""The task-loss baseline along the real rollouts (``--real-state-baseline``): its loss is the real final distance, its
gradient is exact where the model is, and a run reports it beside the other baselines."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from sb3_ml3.model_based import mbrl_cli
from sb3_ml3.model_based.dynamics import RealEnvs
from sb3_ml3.model_based.mbrl import MBRLConfig, MBRLExperiment, final_distance, unroll


def _setting():
    exp = MBRLExperiment("PointmassGoal-v0", MBRLConfig(horizon=12, n_test_goals=3), seed=0)
    goals = exp.meta_test_goals("test")
    envs = RealEnvs(exp.env.env_id, goals)
    theta = {k: v.requires_grad_(True) for k, v in exp.meta_test_policies(len(goals)).items()}
    roll = envs.rollout(exp.actor(theta), exp.horizon, exp.config.eval_seed)
    envs.close()
    return exp, torch.as_tensor(goals, dtype=torch.float32), theta, roll


def test_along_the_real_rollout_the_value_is_real_and_the_gradient_is_the_models():
    exp, goals, theta, roll = _setting()
    real = torch.as_tensor(roll.states, dtype=torch.float32)
    exact = exp.env.exact_step_fn()
    rerun, _ = unroll(exact, exp.policy, theta, exp.env, real[:, 0], goals, exp.horizon, anchor=real)
    torch.testing.assert_close(rerun[:, -1], real[:, -1])  # the real final state, in value
    loss = final_distance(exp.env, rerun, goals).sum()
    np.testing.assert_allclose(loss.item(), roll.final_distance.sum(), rtol=1e-5)
    on_real = torch.autograd.grad(loss, list(theta.values()))
    # the exact dynamics are the real env's: the same gradient as unrolling them from the real start
    states, _ = unroll(exact, exp.policy, theta, exp.env, real[:, 0], goals, exp.horizon)
    unrolled = torch.autograd.grad(final_distance(exp.env, states, goals).sum(), list(theta.values()))
    for a, b in zip(on_real, unrolled):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # a biased model: its own unroll drifts from the real final distance, the real-state one keeps it
    def biased(s, a):
        return exact(s, a) + torch.tensor([0.02, -0.01, 0.0, 0.0])

    drift, _ = unroll(biased, exp.policy, theta, exp.env, real[:, 0], goals, exp.horizon)
    assert abs(final_distance(exp.env, drift, goals).sum().item() - roll.final_distance.sum()) > 0.05
    kept, _ = unroll(biased, exp.policy, theta, exp.env, real[:, 0], goals, exp.horizon, anchor=real)
    torch.testing.assert_close(kept[:, -1], real[:, -1])


def test_a_run_reports_the_real_state_baseline_beside_the_others(tmp_path, monkeypatch):
    from sb3_ml3.cli import main

    monkeypatch.setattr(mbrl_cli, "QUICK", dict(random_episodes=6, model_epochs=1, n_test_goals=2, batch_goals=2,
                                                 task_grid=(("adam", 0.01),)))
    out = str(tmp_path / "run")
    main(["mbrl", "--quick", "--envs", "PointmassGoal-v0", "--n-outer", "2", "--test-updates", "3", "--horizon", "10",
          "--seeds", "0", "--no-progress", "--real-state-baseline", "--out", out])
    results = json.load(open(os.path.join(out, "results.json")))
    entry = results["envs"]["PointmassGoal-v0"]
    row = entry["per_seed"][0]
    assert len(row["test"]["task_model_real"]["final_distance"]) == 4  # before and after each of 3 updates
    assert row["task_tuned_model_real"][1:] == ["adam", 0.01]
    summary = entry["summary"]
    assert np.isclose(summary["final_task_model_real"], np.mean(row["test"]["task_model_real"]["final_distance"][-1]))
    assert "ml3_updates_to_task_model_real_final" in summary
    assert "task loss, real states + model" in mbrl_cli.format_table(results)
