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
from sb3_ml3.model_based.reacher_experts_core import (ReacherExpertsConfig, ReacherExpertsLearner, init_policies,
                                                      make_meta_loss, scale_obs)
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
