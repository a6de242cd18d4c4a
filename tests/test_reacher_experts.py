"""ML3 shaped by expert demonstrations on ReacherGoal-v0 (Sec. IV.B.4, Fig. 6c-d): expert, meta-gradient, short run."""

import argparse
import json
import os

import numpy as np
import pytest
import torch
from torch.func import functional_call

from sb3_ml3.functional import inner_update, meta_gradient
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.model_based import reacher_experts
from sb3_ml3.model_based.experts import ReacherIKPDExpert, collect_demonstrations
from sb3_ml3.model_based.reacher_experts_core import (FEATURES, ReacherExpertsConfig, ReacherExpertsLearner,
                                                      init_policies, make_meta_loss, observation_features, scale_obs)
from sb3_ml3.model_based.reacher_experts_env import GoalRollouts, one_goal_per_sector


def test_expert_reaches_training_and_held_out_targets():
    goals = np.concatenate([one_goal_per_sector("train", 3), one_goal_per_sector("test", 3)])
    demos = collect_demonstrations(goals, n_per_goal=2, seed=5)
    assert demos.states.shape == (8, 2, 50, 10) and demos.actions.shape == (8, 2, 50, 2)
    assert demos.final_distance.max() <= 0.02  # measured: ~1e-8 on every goal
    assert np.abs(demos.actions).max() <= 1.0
    # the goals lie in the sectors they were drawn from: train sectors start at 0, 90, 180, 270 degrees
    angles = np.degrees(np.arctan2(goals[:, 1], goals[:, 0])) % 360
    assert all(int(a // 45) % 2 == 0 for a in angles[:4]) and all(int(a // 45) % 2 == 1 for a in angles[4:])


def test_expert_and_rollouts_refuse_bad_input():
    with pytest.raises(ValueError, match="10-value observation"):
        ReacherIKPDExpert().act(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="shape \\(G, 2\\)"):
        GoalRollouts(np.zeros(2))
    rollouts = GoalRollouts(one_goal_per_sector("train", 0))
    with pytest.raises(ValueError, match="actions of shape \\(4, 2\\)"):
        rollouts.run(lambda obs: np.zeros((4, 3)), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="n_outer"):
        ReacherExpertsConfig(n_outer=0)
    with pytest.raises(ValueError, match="meta_form"):
        ReacherExpertsConfig(meta_form="cubic")


@pytest.mark.parametrize("form", ["quadratic", "mlp"])
def test_meta_gradient_matches_finite_differences(form):
    """grad_phi of the BC loss after one inner step on M_phi, on a tiny policy and meta-loss, in float64."""
    config = ReacherExpertsConfig(policy_hidden=(3,), meta_hidden=(4,), meta_form=form, inner_lr=0.5)
    learner = ReacherExpertsLearner(config)
    learner.policy.double()
    learner.template.double()
    generator = torch.Generator().manual_seed(0)
    theta = {k: v[0].double() for k, v in init_policies(learner.policy, 1, generator).items()}
    meta_loss = make_meta_loss(config, generator).double()
    phi = {k: v.detach().clone() for k, v in meta_loss.named_parameters()}
    demos = collect_demonstrations(one_goal_per_sector("train", 0)[:1], 1, seed=0)
    states, actions = demos.per_goal()
    rollout = scale_obs(states[0, ::7]).double()  # the inner step's states (7 of them)
    query = (scale_obs(states[0, ::5]).double(), torch.as_tensor(actions[0, ::5]).double())
    grads, _ = meta_gradient(learner.learned_loss, learner.bc_loss, theta, phi, rollout, query, config.inner_lr)

    def task_loss(p):
        return learner.bc_loss(inner_update(learner.learned_loss, theta, p, rollout, config.inner_lr), query)

    eps = 1e-6
    for name in phi:
        flat = phi[name].reshape(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 5)):  # five entries per tensor
            plus = {k: v.clone() for k, v in phi.items()}
            minus = {k: v.clone() for k, v in phi.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            numeric = (task_loss(plus) - task_loss(minus)) / (2 * eps)
            assert float(grads[name].reshape(-1)[i]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9), (name, i)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_inner_step_descends_the_learned_loss_on_rollout_states():
    config = ReacherExpertsConfig()
    learner = ReacherExpertsLearner(config)
    generator = torch.Generator().manual_seed(1)
    theta = {k: v[0] for k, v in init_policies(learner.policy, 1, generator).items()}
    meta_loss = make_meta_loss(config, generator)
    phi = dict(meta_loss.named_parameters())
    states = scale_obs(collect_demonstrations(one_goal_per_sector("test", 1)[:1], 1, seed=2).states[0, 0])
    with torch.no_grad():
        before = learner.learned_loss(theta, phi, states)
        after = learner.learned_loss(inner_update(learner.learned_loss, theta, phi, states, 0.05), phi, states)
    assert float(after) < float(before)
    actions = functional_call(learner.policy, theta, (states,))
    assert actions.shape == (50, 2)


def test_quick_run_shows_the_ordering_and_writes_the_loss(tmp_path):
    """Seeded --quick run: ML3's held-out final distance beats behavioural cloning's best and the floor."""
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    reacher_experts.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--quick", "--out", str(out), "--no-progress", "--no-references"])
    results = reacher_experts.run(args)
    s, row = results["summary"], results["per_seed"][0]
    assert row["expert"]["train"]["final_distance"] <= 0.02 and row["expert"]["test"]["final_distance"] <= 0.02
    assert row["demo_final_distance_max"] <= 0.02
    initial = float(np.mean(np.asarray(row["ml3"]["test"]["final_distance"])[:, 0]))
    # ML3 improves on the untrained policies on targets it never had demonstrations of (measured: 0.133 -> 0.082) ...
    assert row["ml3_test_final_distance"] < 0.75 * initial, (row["ml3_test_final_distance"], initial)
    # ... and ends closer than behavioural cloning's best evaluation on the same targets (measured: 0.109)
    assert row["ml3_test_final_distance"] < s["bc_mean_curve_best"], (row["ml3_test_final_distance"], s)
    loaded = MetaLoss.load(str(out / "meta_loss_seed0.zip"))
    assert loaded.metadata["experiment"] == "reacher-experts" and str(loaded.spec) == "obs:10, action:2"
    assert {os.path.basename(f) for f in results["figures"]} == {"fig6c_targets.png", "fig6d_test_targets.png",
                                                                  "train_targets.png"}
    json.dumps(results)  # JSON-ready
    with pytest.raises(ValueError, match="already holds results"):
        (out / "results.json").write_text("{}")
        reacher_experts.run(args)


def test_arm_frame_features_are_invariant_to_rotating_arm_and_goal_together():
    """Rotating the shoulder and the goal by the same angle changes neither the features nor the expert's torques."""
    rng = np.random.default_rng(0)
    q, dq = rng.uniform(-2.5, 2.5, (6, 2)), rng.uniform(-1, 1, (6, 2))
    goals = rng.uniform(0.06, 0.18, (6, 1)) * np.stack([np.cos(g := rng.uniform(0, 6.3, 6)), np.sin(g)], 1)

    def observation(q: np.ndarray, goals: np.ndarray) -> np.ndarray:
        tip = 0.1 * np.stack([np.cos(q[:, 0]), np.sin(q[:, 0])], 1) + 0.11 * np.stack(
            [np.cos(q[:, 0] + q[:, 1]), np.sin(q[:, 0] + q[:, 1])], 1)
        return np.concatenate([np.cos(q), np.sin(q), goals, dq, tip - goals], 1)

    angle = 1.234
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    obs, turned = observation(q, goals), observation(q + [angle, 0.0], goals @ rotation.T)
    features = observation_features(obs, "arm-frame")
    assert features.shape == (6, FEATURES["arm-frame"])
    torch.testing.assert_close(observation_features(turned, "arm-frame"), features, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ReacherIKPDExpert().act(turned), ReacherIKPDExpert().act(obs), atol=1e-6)
    assert not torch.allclose(observation_features(turned, "obs"), observation_features(obs, "obs"))
    with pytest.raises(ValueError, match="features must be one of"):
        ReacherExpertsConfig(features="polar")
    with pytest.raises(ValueError, match="task_states must be one of"):
        ReacherExpertsConfig(task_states="everywhere")


def test_random_arm_demonstrations_cover_the_joint_space_and_still_reach():
    goals = one_goal_per_sector("train", 2)
    near = collect_demonstrations(goals, n_per_goal=6, seed=3)
    spread = collect_demonstrations(goals, n_per_goal=6, seed=3, random_arm=True)

    def shoulder(demos):  # each episode's initial shoulder angle
        return np.arctan2(demos.states[:, :, 0, 2], demos.states[:, :, 0, 0])

    assert np.ptp(shoulder(near)) < 0.25 and np.ptp(shoulder(spread)) > 3.0  # ReacherGoal's reset: +-0.1 rad
    assert spread.final_distance.max() <= 0.02  # the expert reaches from anywhere (measured: < 1e-4)
    again = collect_demonstrations(goals, n_per_goal=6, seed=3, random_arm=True)
    np.testing.assert_array_equal(again.states, spread.states)  # seeded


def test_rollout_task_states_query_the_expert_on_the_visited_states():
    """task_states="rollouts": the BC task loss reads the expert at every state of each meta-training rollout."""
    calls = []

    def expert(obs: np.ndarray) -> np.ndarray:
        calls.append(obs.copy())
        return ReacherIKPDExpert().act(obs)

    config = ReacherExpertsConfig(n_outer=3, policy_hidden=(8,), meta_hidden=(8,), features="arm-frame",
                                  task_states="rollouts", rollout_starts="random")
    learner = ReacherExpertsLearner(config, expert=expert)
    demos = collect_demonstrations(one_goal_per_sector("train", 0), 1, seed=0)
    meta_loss, history = learner.meta_train(demos, torch.Generator().manual_seed(0), seed=0)
    assert len(calls) == 3 and all(c.shape == (4 * 50, 10) for c in calls)
    assert not np.allclose(calls[0], calls[1])  # new rollouts each outer step
    first = np.concatenate([c[::50] for c in calls])  # each episode's initial state: random arms
    assert np.ptp(np.arctan2(first[:, 2], first[:, 0])) > 2.0
    assert str(meta_loss.spec) == "obs:7, action:2" and meta_loss.metadata["features"] == "arm-frame"
    assert len(history["task_loss"]) == 3 and np.all(np.isfinite(history["task_loss"]))


def test_keep_best_returns_the_meta_loss_with_the_best_training_target_validation():
    config = ReacherExpertsConfig(n_outer=4, policy_hidden=(8,), meta_hidden=(8,), features="arm-frame",
                                  task_states="rollouts", val_every=2, val_updates=2, meta_lr=0.05)
    learner = ReacherExpertsLearner(config)
    demos = collect_demonstrations(one_goal_per_sector("train", 0), 1, seed=0)
    meta_loss, history = learner.meta_train(demos, torch.Generator().manual_seed(0), seed=0)
    assert history["validation_step"] == [0, 2, 4] and len(history["task_loss"]) == 4
    scores = history["validation"]
    assert history["kept_step"] == [history["validation_step"][int(np.argmin(scores))]]
    # the returned loss is the kept one: validating it again gives the best score (the validation is seeded)
    assert learner.validate(meta_loss, demos.goals, seed=0) == pytest.approx(min(scores), abs=1e-9)
    with pytest.raises(ValueError, match="val_every"):
        ReacherExpertsConfig(val_every=-1)


def test_meta_test_can_return_the_trained_policies_for_a_look():
    """return_policies hands back the last parameters: rolled out again they give the curve's last column."""
    config = ReacherExpertsConfig(policy_hidden=(8,), meta_hidden=(8,), features="arm-frame")
    learner = ReacherExpertsLearner(config)
    meta_loss = make_meta_loss(config, torch.Generator().manual_seed(0))
    goals = one_goal_per_sector("test", 3)[:2]
    result = learner.meta_test(meta_loss, goals, torch.Generator().manual_seed(1), 500, updates=2, return_policies=True)
    assert result["final_distance"].shape == (2, 3) and set(result["policies"]) == set(dict(learner.policy.named_parameters()))
    rollouts = GoalRollouts(goals)
    episode = rollouts.run(learner.policy_fn(result["policies"]), [500, 501])
    rollouts.close()
    assert episode.final_distance == pytest.approx(result["final_distance"][:, -1], abs=1e-9)
    assert "policies" not in learner.meta_test(meta_loss, goals, torch.Generator().manual_seed(1), 500, updates=1)
