"""The model-based meta-loss reading its trajectory's outcome (``--loss-outcome final-error``): the feature's values and
invariance, that the real rollout's own miss reaches the meta-test update, that the loss acts on it, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sb3_ml3.model_based.dynamics import RealEnvs
from sb3_ml3.model_based.mbrl import MBRLConfig, MBRLExperiment
from sb3_ml3.model_based.mbrl_envs import final_error_features, reacher_position

TINY = dict(inner_optimizer="adam", alpha_max=0.1, alpha_init=0.02, target_bound=0.9, horizon=6, n_outer=2,
            model_every=100, random_episodes=8, model_epochs=1, batch_goals=2, inner_steps=2, test_updates=2,
            n_test_goals=2)


def test_final_error_is_the_scaled_miss_and_the_reachers_turns_with_the_arm():
    g = torch.Generator().manual_seed(0)
    states, final, goals = torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)
    point = final_error_features("PointmassGoal-v0", states, final, goals)
    torch.testing.assert_close(point, ((final[:, :2] - goals) / 2.5)[:, None].expand(-1, 4, -1))
    reach = final_error_features("ReacherGoal4D-v0", states, final, goals)
    miss = 10.0 * (reacher_position(final) - goals)
    # the miss rotated into each step's upper-arm frame: its length is kept, its bearing is the miss's less q1_t
    torch.testing.assert_close(torch.linalg.vector_norm(reach, dim=-1),
                               torch.linalg.vector_norm(miss, dim=-1)[:, None].expand(-1, 4))
    bearing = torch.atan2(reach[..., 1], reach[..., 0])
    expected = torch.atan2(miss[:, 1], miss[:, 0])[:, None] - states[..., 0]
    torch.testing.assert_close(torch.remainder(bearing - expected + math.pi, 2 * math.pi) - math.pi,
                               torch.zeros(3, 4), atol=1e-5, rtol=0)
    # turning arm and goal together about the base changes nothing
    turn = 0.7
    rot = torch.tensor([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    shift = torch.tensor([turn, 0.0, 0.0, 0.0])
    torch.testing.assert_close(final_error_features("ReacherGoal4D-v0", states + shift, final + shift, goals @ rot.T),
                               reach, atol=1e-5, rtol=0)
    assert torch.equal(final_error_features("ReacherGoal4D-v0", states, None, goals), torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="PointmassGoal-v0"):
        final_error_features("Walker-v0", states, final, goals)


def test_the_loss_reads_the_miss_beside_each_steps_context_and_acts_on_it():
    exp = MBRLExperiment("ReacherGoal4D-v0", MBRLConfig(loss_features="arm-frame", policy_features="arm-frame",
                                                        loss_outcome="final-error", **TINY), seed=0)
    plain = MBRLExperiment("ReacherGoal4D-v0", MBRLConfig(loss_features="arm-frame", policy_features="arm-frame",
                                                          **TINY), seed=0)
    assert exp.meta_loss.feature_dim == plain.meta_loss.feature_dim + 2 == 9
    assert exp.meta_loss.metadata["loss_outcome"] == "final-error"
    g = torch.Generator().manual_seed(1)
    states, goals = torch.randn(2, 6, 4, generator=g) * 0.5, torch.tensor([[0.1, 0.05], [-0.08, 0.12]])
    near, far = states[:, -1].clone(), states[:, -1] + torch.tensor([0.5, -0.4, 0.0, 0.0])
    features, context = exp.contexts(states, goals, near)
    torch.testing.assert_close(context[..., :7], plain.contexts(states, goals)[1])  # the step's own context first
    torch.testing.assert_close(context[..., 7:], final_error_features("ReacherGoal4D-v0", states, near, goals))
    assert torch.equal(exp.contexts(states, goals)[1][..., 7:], torch.zeros(2, 6, 2))  # no outcome: on target
    # the same steps, another ending: another update (the loss acts on the outcome); the plain loss cannot tell
    theta = exp.meta_test_policies(2)
    phi = {k: v.detach() for k, v in exp.meta_loss.named_parameters()}
    recorded = exp.policy(theta, features)
    updates = [exp.inner(theta, phi, features, recorded, None, exp.contexts(states, goals, f)[1])[0]
               for f in (near, far)]
    assert max(float((updates[0][k] - updates[1][k]).abs().max()) for k in theta) > 1e-6
    with pytest.raises(ValueError, match="--loss-outcome"):
        MBRLConfig(loss_outcome="final-distance")


def test_meta_test_updates_read_the_real_rollouts_own_miss(monkeypatch):
    exp = MBRLExperiment("PointmassGoal-v0", MBRLConfig(loss_outcome="final-error", **TINY), seed=0)
    seen = []
    contexts = exp.contexts

    def spy(states, goals, final=None):
        seen.append((goals.clone(), final))
        return contexts(states, goals, final)

    monkeypatch.setattr(exp, "contexts", spy)
    goals = exp.meta_test_goals("test")
    envs = RealEnvs(exp.env.env_id, goals)
    try:
        result = exp.meta_test_ml3(envs, exp.meta_test_policies(len(goals)), 2)
    finally:
        envs.close()
    assert len(seen) == 2 and all(final is not None for _, final in seen)
    # the miss the first update reads is the first real rollout's: its distance is the curve's first point
    goal_t, final = seen[0]
    distance = torch.linalg.vector_norm(exp.env.position(final) - goal_t, dim=-1)
    np.testing.assert_allclose(distance.numpy(), result["final_distance"][0], rtol=1e-5, atol=1e-6)


def test_meta_training_with_the_outcome_runs_and_the_loss_keeps_its_width(tmp_path):
    exp = MBRLExperiment("PointmassGoal-v0", MBRLConfig(loss_outcome="final-error", minimiser_weight=0.3, **TINY),
                         seed=0)
    log = exp.meta_train()
    assert np.isfinite(log["task_loss"]).all() and log["skipped_meta_steps"] == 0
    path = tmp_path / "loss.zip"
    exp.meta_loss.save(path)
    loaded = type(exp.meta_loss).load(path)
    assert loaded.feature_dim == 8 and loaded.metadata["loss_outcome"] == "final-error"
