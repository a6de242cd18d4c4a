"""Model-based ML3 (``ml3 mbrl``): gradients through the unroll, the learned rate's bounds, the inner step,
persistence, the dynamics model, and a seeded short run showing the claimed ordering."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sb3_ml3.envs import sample_tasks
from sb3_ml3.envs.pointmass import torch_step
from sb3_ml3.functional import inner_update
from sb3_ml3.meta_loss import MetaLossSpecError
from sb3_ml3.model_based.dynamics import EnsembleDynamics, TransitionBuffer, random_action_rollouts
from sb3_ml3.model_based.mbrl import MBRLConfig, MBRLExperiment, final_distance, make_learned_loss, unroll
from sb3_ml3.model_based.mbrl_cli import summarise, updates_to_reach
from sb3_ml3.model_based.mbrl_envs import MujocoSimulator, MujocoStep, mbrl_env, reacher_position
from sb3_ml3.model_based.mbrl_nets import LossAndRate, PolicyBatch


def _double(params):
    return {k: v.double() for k, v in params.items()}


def test_gradient_through_model_unroll_matches_finite_differences():
    torch.manual_seed(0)
    env = mbrl_env("PointmassGoal-v0", horizon=15)
    model = EnsembleDynamics(4, 2, (16, 16), 2, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        model.delta_std.fill_(0.1)
    policy = PolicyBatch(env.feature_dim, 2, (8,))
    params = _double(policy.init(3, torch.Generator().manual_seed(2)))
    params = {k: v * 5 for k, v in params.items()}  # actions away from zero
    start = torch.zeros(3, 4, dtype=torch.float64)
    goals = torch.tensor([[1.0, 0.5], [0.7, -1.2], [1.5, 0.0]], dtype=torch.float64)

    def loss(p):
        return final_distance(env, unroll(model, policy, p, env, start, goals, env.horizon)[0], goals).sum()

    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    analytic = torch.autograd.grad(loss(leaf), list(leaf.values()))
    for (name, value), g in zip(params.items(), analytic):
        for index in [(0, 0, 0), (1, 0, 1), (2, value.shape[1] - 1, value.shape[2] - 1)]:
            plus, minus = dict(params), dict(params)
            bump = torch.zeros_like(value)
            bump[index] = 1e-6
            plus[name], minus[name] = value + bump, value - bump
            numeric = (loss(plus) - loss(minus)) / 2e-6
            assert float(g[index]) == pytest.approx(float(numeric.detach()), rel=1e-4, abs=1e-7)


def test_mujoco_step_matches_env_and_its_jacobian_matches_finite_differences():
    import gymnasium as gym

    sim = MujocoSimulator()
    env = gym.make("ReacherGoal4D-v0", goal=[0.1, 0.1])
    obs, _ = env.reset(seed=3)
    action = np.array([0.4, -0.7], dtype=np.float32)
    obs_next = env.step(action)[0]
    nxt, jac_s, jac_a = sim.step(obs[None, :4].astype(np.float64), action[None].astype(np.float64))
    assert np.allclose(nxt[0], obs_next[:4], atol=1e-4)
    state = torch.tensor(obs[None, :4], dtype=torch.float64, requires_grad=True)
    act = torch.tensor(action[None], dtype=torch.float64, requires_grad=True)
    out = MujocoStep.apply(state, act, sim)
    weights = torch.tensor([[0.3, -1.0, 0.05, 0.02]], dtype=torch.float64)
    g_s, g_a = torch.autograd.grad((out * weights).sum(), (state, act))
    for i in range(2):
        bump = np.zeros((1, 2))
        bump[0, i] = 1e-5
        f_plus = sim.step(obs[None, :4].astype(np.float64), action[None] + bump)[0]
        f_minus = sim.step(obs[None, :4].astype(np.float64), action[None] - bump)[0]
        numeric = float(((f_plus - f_minus) / 2e-5 * weights.numpy()).sum())
        assert float(g_a[0, i]) == pytest.approx(numeric, rel=1e-3, abs=1e-6)
    assert torch.isfinite(g_s).all()


def test_reacher_forward_kinematics_is_mujocos_fingertip():
    import gymnasium as gym

    env = gym.make("ReacherGoal4D-v0")
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs = env.step(env.action_space.sample())[0]
    tip = reacher_position(torch.tensor(obs[:4], dtype=torch.float64)).numpy()
    assert np.allclose(tip, env.unwrapped._fingertip(), atol=1e-4)


def test_learned_rate_is_positive_and_bounded():
    meta = LossAndRate(6, 2, (16,), alpha_max=2.0, alpha_init=0.5, generator=torch.Generator().manual_seed(0))
    context, action = torch.randn(4, 7, 6), torch.randn(4, 7, 2)
    loss, alpha = meta(context, action, action)
    assert torch.allclose(alpha, torch.full((4,), 0.5))  # starts at alpha_init
    assert (loss >= 0).all()  # quadratic form: bounded below
    with torch.no_grad():
        for p in meta.rate_net.parameters():
            p.mul_(0).add_(torch.randn_like(p) * 50)
    for scale in (1e-3, 1.0, 1e3):
        _, alpha = meta(context * scale, action * scale, action * scale)
        assert torch.isfinite(alpha).all() and (alpha >= 0).all() and (alpha <= 2.0).all()
    with pytest.raises(ValueError, match="alpha_init < alpha_max"):
        LossAndRate(6, 2, alpha_max=1.0, alpha_init=1.0)
    with pytest.raises(ValueError, match="expects contexts"):
        meta(torch.randn(4, 7, 5), action, action)


def test_inner_step_is_per_policy_sgd_with_the_learned_rate():
    policy = PolicyBatch(6, 2, (8,))
    meta = LossAndRate(6, 2, (8,), alpha_max=3.0, alpha_init=1.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        meta.rate_net[-1].weight.normal_()  # a rate that differs between trajectories
    theta = policy.init(3, torch.Generator().manual_seed(2))
    context = torch.randn(3, 5, 6)
    recorded = policy(theta, context).detach()
    phi = {k: v.detach() for k, v in meta.named_parameters()}
    updated = inner_update(make_learned_loss(policy, meta), theta, phi, (context, recorded), 1.0)
    _, alpha = meta(context, recorded, recorded)
    assert alpha.std() > 0
    for b in range(3):
        single = {k: v[b:b + 1].clone().requires_grad_(True) for k, v in theta.items()}
        loss, _ = meta(context[b:b + 1], policy(single, context[b:b + 1]), recorded[b:b + 1])
        grads = torch.autograd.grad(loss.sum(), list(single.values()))
        for (name, value), g in zip(single.items(), grads):
            assert torch.allclose(updated[name][b:b + 1], value - alpha[b] * g, atol=1e-6)


def test_meta_loss_round_trip_and_bad_file(tmp_path):
    meta = LossAndRate(10, 2, (8,), metadata={"env_id": "ReacherGoal4D-v0"}, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "loss.zip"
    meta.save(path)
    loaded = LossAndRate.load(path)
    context, action = torch.randn(2, 3, 10), torch.randn(2, 3, 2)
    for a, b in zip(meta(context, action, action), loaded(context, action, action)):
        assert torch.equal(a, b)
    assert loaded.metadata["env_id"] == "ReacherGoal4D-v0"
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(MetaLossSpecError):
        LossAndRate.load(tmp_path / "bad.zip")


def test_dynamics_model_learns_the_pointmass():
    goals = sample_tasks("PointmassGoal-v0", 40, "train", seed=0)
    roll = random_action_rollouts("PointmassGoal-v0", goals, 50, seed=0)
    buffer = TransitionBuffer(4, 2)
    buffer.add_rollouts(roll.states, roll.actions)
    s, a, s_next = buffer.tensors()
    still = float(((s - s_next) ** 2).mean().sqrt())  # predicting "no change"
    model = EnsembleDynamics(4, 2, (32, 32), 2, generator=torch.Generator().manual_seed(0))
    model.fit(buffer, 40, batch_size=256, lr=3e-3, generator=torch.Generator().manual_seed(0))
    assert model.one_step_error(buffer) < 0.4 * still
    exact = float(((torch_step(s, a) - s_next) ** 2).mean().sqrt())
    assert exact < 1e-5
    with pytest.raises(ValueError, match="expects states"):
        model(torch.zeros(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="add_rollouts expects"):
        buffer.add_rollouts(np.zeros((2, 3, 4)), np.zeros((2, 3, 2)))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="model-based ML3 runs on"):
        mbrl_env("AntGoal-v0")
    with pytest.raises(ValueError, match="horizon"):
        mbrl_env("PointmassGoal-v0", horizon=80)
    from sb3_ml3.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["mbrl", "--out", "unused", "--n-outer", "0"])
    assert exc.value.code == 2


def test_updates_to_reach():
    assert updates_to_reach([1.0, 0.5, 0.2, 0.1], 0.3) == 2
    assert updates_to_reach([1.0, 0.5], 0.1) is None


def test_quick_run_shows_the_claimed_ordering():
    """A seeded short PointmassGoal run (horizon 20, 100 outer iterations): from real rollouts and without a model,
    ML3 reaches the final distance of the tuned task loss through the learned model within 1/3 of the updates."""
    config = MBRLConfig(horizon=20, n_outer=100, model_every=50, random_episodes=60, model_epochs=20, test_updates=9,
                        n_test_goals=4, batch_goals=4, task_grid=(("adam", 0.01), ("adam", 0.03)))
    experiment = MBRLExperiment("PointmassGoal-v0", config, seed=0)
    row = experiment.run()
    row["wall_s"] = 0.0
    references = {"zero_action": {"final_distance": 1.0, "label": "zero"}}
    summary = summarise("PointmassGoal-v0", [row], references)
    ml3 = summary["curve_ml3"]
    assert ml3[-1] < 0.5 * ml3[0]  # ML3 learns from real rollouts without a model
    assert summary["final_ml3"] < summary["final_task_model"]
    assert summary["ml3_updates_to_task_model_final"] is not None
    assert summary["ratio_to_task_model"] <= 1.0 / 3.0
    alphas = np.asarray(row["test"]["ml3"]["alpha"])
    assert (alphas > 0).all() and (alphas < config.alpha_max).all()


def test_relative_target_pulls_towards_recorded_action_plus_change_and_round_trips(tmp_path):
    """relative_target: M = sum_j w_j (a_j - (a~_j + d_j))^2, so at a = a~ the step follows the learned change d."""
    meta = LossAndRate(6, 2, (8,), relative_target=True, generator=torch.Generator().manual_seed(0))
    context, action = torch.randn(3, 4, 6), torch.randn(3, 4, 2)
    q, target, weight = meta.loss_net.quadratic_form({"context": context, "action": action, "recorded": action})
    change = target - action
    loss, _ = meta(context, action, action)
    assert torch.allclose(loss, (weight * change ** 2).sum(-1).mean(-1), atol=1e-6)
    shifted, _ = meta(context, action + 1.0, action)  # the target moves with the recorded action, not the policy's
    assert not torch.allclose(shifted, loss)
    meta.save(tmp_path / "rel.zip")
    loaded = LossAndRate.load(tmp_path / "rel.zip")
    assert loaded.relative_target
    for a, b in zip(meta(context, action, action), loaded(context, action, action)):
        assert torch.equal(a, b)


def test_pre_tanh_loss_keeps_a_gradient_where_actions_saturate():
    """A loss on tanh(u) has no gradient at a saturated policy; the same loss on u keeps one (loss_on_pre_tanh)."""
    policy = PolicyBatch(6, 2, (8,))
    theta = policy.init(2, torch.Generator().manual_seed(0))
    theta["b1"] = torch.full_like(theta["b1"], 20.0)  # every action at +1
    context = torch.randn(2, 5, 6)
    assert torch.allclose(policy(theta, context), torch.tanh(policy(theta, context, pre_tanh=True)))
    assert policy(theta, context).abs().min() > 0.999  # saturated
    meta = LossAndRate(6, 2, (8,), generator=torch.Generator().manual_seed(1))
    phi = {k: v.detach() for k, v in meta.named_parameters()}
    moves = []
    for pre_tanh in (False, True):
        recorded = policy(theta, context, pre_tanh=pre_tanh).detach()
        updated = inner_update(make_learned_loss(policy, meta, pre_tanh), theta, phi, (context, recorded), 1.0)
        moves.append(float((updated["w1"] - theta["w1"]).abs().max()))
    assert moves[0] < 1e-6 < 1e-2 < moves[1]


def test_random_amplitude_scales_each_episode():
    goals = sample_tasks("ReacherGoal4D-v0", 6, "train", seed=0)
    full = random_action_rollouts("ReacherGoal4D-v0", goals, 5, seed=1)
    gentle = random_action_rollouts("ReacherGoal4D-v0", goals, 5, seed=1, amplitude_min=0.2)
    ratio = np.abs(gentle.actions).max(axis=(1, 2)) / np.abs(full.actions).max(axis=(1, 2))
    assert np.all(ratio <= 1.0 + 1e-6) and np.all(ratio >= 0.2 - 1e-6) and ratio.std() > 0
    with pytest.raises(ValueError, match="amplitude_min"):
        random_action_rollouts("ReacherGoal4D-v0", goals, 5, seed=1, amplitude_min=1.5)


def test_meta_objective_options_and_persistent_policies(monkeypatch):
    """task_loss_steps n: the mean distance over the last n states; policy_reset_every: policies live that many
    iterations (fresh ones draw new goals); the defaults keep Algorithm 3 as written."""
    config = MBRLConfig(horizon=6, n_outer=4, model_every=100, random_episodes=8, model_epochs=1, batch_goals=2,
                        inner_steps=1, policy_reset_every=2, task_loss_steps=3, loss_on_pre_tanh=True,
                        relative_target=True)
    experiment = MBRLExperiment("PointmassGoal-v0", config, seed=0)
    inits = []
    original = experiment.policy.init
    monkeypatch.setattr(experiment.policy, "init", lambda n, g=None: inits.append(n) or original(n, g))
    log = experiment.meta_train()
    assert len(inits) == 2 and len(log["task_loss"]) == 4 and np.isfinite(log["task_loss"]).all()
    default = MBRLConfig()
    assert (default.policy_reset_every, default.task_loss_steps, default.random_amplitude_min) == (1, 1, 1.0)
    assert not default.loss_on_pre_tanh and not default.relative_target


def test_final_speed_weight_adds_the_final_speed_to_the_task_loss():
    values = []
    for weight in (0.0, 2.0):
        experiment = MBRLExperiment("PointmassGoal-v0", MBRLConfig(horizon=5, inner_steps=1, batch_goals=2,
                                                                   final_speed_weight=weight), seed=0)
        theta = experiment.policy.init(2, torch.Generator().manual_seed(3))
        theta = {k: v * 20.0 for k, v in theta.items()}  # moving policies
        phi = {k: v.detach() for k, v in experiment.meta_loss.named_parameters()}
        start, goals = torch.zeros(2, 4), torch.tensor([[1.0, 0.0], [0.0, -1.0]])
        value, (updated, _, _) = experiment.meta_objective(phi, theta, start, goals)
        with torch.no_grad():
            states, _ = unroll(experiment.model, experiment.policy, updated, experiment.env, start, goals, 5)
        values.append((float(value.detach()), float(torch.linalg.vector_norm(states[:, -1, 2:4], dim=-1).mean())))
    assert values[1][1] > 0 and values[1][0] == pytest.approx(values[0][0] + 2.0 * values[1][1], rel=1e-5)


def test_fixed_policy_init_starts_meta_training_baselines_and_meta_test_from_one_draw(monkeypatch):
    """policy_init="fixed" (the authors' protocol): every batch of policies is a copy of one draw per seed."""
    config = MBRLConfig(horizon=5, n_outer=2, model_every=100, random_episodes=8, model_epochs=1, batch_goals=3,
                        inner_steps=1, policy_init="fixed")
    experiment = MBRLExperiment("PointmassGoal-v0", config, seed=0)
    again = MBRLExperiment("PointmassGoal-v0", config, seed=0).fixed_policy
    assert all(torch.equal(experiment.fixed_policy[k], again[k]) for k in again)  # seeded: the same draw
    batch = experiment.initial_policies(3, torch.Generator().manual_seed(9))
    for k, v in batch.items():
        assert v.shape[0] == 3 and all(torch.equal(v[i], experiment.fixed_policy[k][0]) for i in range(3))
    seen = []
    original = experiment.initial_policies
    monkeypatch.setattr(experiment, "initial_policies", lambda n, g: seen.append(n) or original(n, g))
    assert np.isfinite(experiment.meta_train()["task_loss"]).all() and seen == [3, 3]
    fresh = MBRLExperiment("PointmassGoal-v0", MBRLConfig(horizon=5), seed=0)
    assert fresh.fixed_policy is None
    draw = fresh.initial_policies(2, torch.Generator().manual_seed(9))
    assert not torch.equal(next(iter(draw.values()))[0], next(iter(draw.values()))[1])
    with pytest.raises(ValueError, match="policy_init"):
        MBRLExperiment("PointmassGoal-v0", MBRLConfig(horizon=5, policy_init="zeros"), seed=0)


def test_free_loss_form_is_an_mlp_of_context_and_action_and_round_trips(tmp_path):
    """loss_form='free': M is the mean over t of an ELU MLP of (c_t, a_t), unbounded, with no target structure;
    the inner step still is alpha grad M per policy, and the file says which form it is."""
    meta = LossAndRate(6, 2, (8,), loss_form="free", generator=torch.Generator().manual_seed(0))
    assert not meta.loss_net.quadratic and meta.loss_net.activation == "elu"
    context, action = torch.randn(3, 4, 6), torch.randn(3, 4, 2)
    loss, alpha = meta(context, action, action)
    by_hand = meta.loss_net.net(torch.cat([context, action], -1)).squeeze(-1).mean(-1)
    assert torch.allclose(loss, by_hand, atol=1e-6) and torch.allclose(alpha, torch.ones(3))
    wide = meta(torch.randn(64, 4, 6, generator=torch.Generator().manual_seed(1)) * 3,
                torch.randn(64, 4, 2, generator=torch.Generator().manual_seed(2)) * 3, action[:1].expand(64, 4, 2))[0]
    assert wide.min() < 0 < wide.max()  # unbounded: no quadratic form under it
    meta.save(tmp_path / "free.zip")
    loaded = LossAndRate.load(tmp_path / "free.zip")
    assert loaded.loss_form == "free" and torch.equal(loaded(context, action, action)[0], loss)
    with pytest.raises(ValueError, match="loss_form"):
        LossAndRate(6, 2, loss_form="cubic")
    with pytest.raises(ValueError, match="relative_target"):
        LossAndRate(6, 2, loss_form="free", relative_target=True)


def _adam_setup(eps: float = 1e-2):
    from sb3_ml3.model_based.mbrl_inner import InnerStep

    policy = PolicyBatch(6, 2, (8,))
    meta = LossAndRate(6, 2, (8,), alpha_max=0.1, alpha_init=0.02, generator=torch.Generator().manual_seed(1),
                       target_bound=0.9).double()
    with torch.no_grad():
        meta.rate_net[-1].weight.normal_()  # a rate that differs between trajectories
    theta = _double(policy.init(3, torch.Generator().manual_seed(2)))
    context = torch.randn(3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    recorded = policy(theta, context).detach()
    return InnerStep(policy, meta, "adam", adam_eps=eps), policy, meta, theta, context, recorded


def test_adam_inner_step_is_per_policy_adam_whose_step_size_is_the_learned_rate():
    step, policy, meta, theta, context, recorded = _adam_setup()
    phi = {k: v.detach() for k, v in meta.named_parameters()}
    once, alpha, state = step(theta, phi, context, recorded)
    twice, alpha2, _ = step(once, phi, context, recorded, state)
    assert alpha.std() > 0 and (alpha > 0).all() and (alpha < 0.1).all()
    for b in range(3):  # torch.optim.Adam on policy b alone, its lr set to that policy's rate before each step
        single = {k: v[b:b + 1].clone().requires_grad_(True) for k, v in theta.items()}
        optimizer = torch.optim.Adam(single.values(), lr=float(alpha[b]), eps=1e-2)
        for expected, rate in ((once, alpha), (twice, alpha2)):
            optimizer.param_groups[0]["lr"] = float(rate[b])
            optimizer.zero_grad()
            meta(context[b:b + 1], policy(single, context[b:b + 1]), recorded[b:b + 1])[0].sum().backward()
            optimizer.step()
            for name, value in single.items():
                torch.testing.assert_close(expected[name][b:b + 1].detach(), value.detach(), rtol=1e-6, atol=1e-9)


def test_adam_inner_steps_meta_gradient_matches_finite_differences_and_needs_a_large_eps():
    step, policy, meta, theta, context, recorded = _adam_setup()
    wanted = torch.full((3, 5, 2), 0.3, dtype=torch.float64)

    def outer(phi, inner=step):
        params, state = theta, None
        for _ in range(2):
            params, _, state = inner(params, phi, context, recorded, state)
        return ((policy(params, context) - wanted) ** 2).sum()

    phi = {k: v.detach().clone() for k, v in meta.named_parameters()}
    grads = torch.func.grad(outer)(phi)
    for name in ("loss_net.net.0.weight", "rate_net.0.weight", "rate_net.2.bias"):
        for index in [(0,) * phi[name].dim(), tuple(s - 1 for s in phi[name].shape)]:
            plus, minus = dict(phi), dict(phi)
            bump = torch.zeros_like(phi[name])
            bump[index] = 1e-6
            plus[name], minus[name] = phi[name] + bump, phi[name] - bump
            numeric = float((outer(plus) - outer(minus)) / 2e-6)
            assert float(grads[name][index]) == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    # one step at PyTorch's eps is about rate * sign(grad): its direction passes (almost) no meta-gradient to the
    # loss's target (measured: 6e-4 of the large eps's; only components with |grad| near 1e-8 pass any)
    tiny, *_ = _adam_setup(eps=1e-8)
    first = {k: g for k, g in torch.func.grad(lambda p: ((policy(tiny(theta, p, context, recorded)[0], context)
                                                            - wanted) ** 2).sum())(phi).items() if "loss_net" in k}
    large = {k: g for k, g in torch.func.grad(lambda p: ((policy(step(theta, p, context, recorded)[0], context)
                                                            - wanted) ** 2).sum())(phi).items() if "loss_net" in k}
    assert max(float(g.abs().max()) for g in first.values()) < 1e-2 * max(float(g.abs().max()) for g in large.values())


def test_adam_settings_are_checked_and_the_bounded_target_round_trips(tmp_path):
    from sb3_ml3.model_based.mbrl_inner import InnerStep

    with pytest.raises(ValueError, match="Adam's step size"):
        MBRLExperiment("PointmassGoal-v0", MBRLConfig(inner_optimizer="adam"), seed=0)  # alpha_max 10 is no Adam lr
    with pytest.raises(ValueError, match="optimizer must be one of"):
        InnerStep(PolicyBatch(6, 2), LossAndRate(6, 2), "rmsprop")
    with pytest.raises(ValueError, match="free form"):
        LossAndRate(6, 2, loss_form="free", target_bound=0.9)
    _, _, meta, _, context, recorded = _adam_setup()
    _, target, _ = meta.loss_net.quadratic_form({"context": context, "action": recorded})
    assert target.abs().max() <= 0.9
    meta.save(tmp_path / "m.zip")
    back = LossAndRate.load(tmp_path / "m.zip").double()
    assert back.loss_net.target_bound == 0.9 and torch.equal(back(context, recorded, recorded)[0],
                                                             meta(context, recorded, recorded)[0])
    config = MBRLConfig(inner_optimizer="adam", alpha_max=0.1, alpha_init=0.02, target_bound=0.9, horizon=5,
                        n_outer=2, model_every=100, random_episodes=8, model_epochs=1, batch_goals=2,
                        inner_steps=2, policy_reset_every=2)
    log = MBRLExperiment("PointmassGoal-v0", config, seed=0).meta_train()  # Adam's state lives with the policies
    assert np.isfinite(log["task_loss"]).all() and all(0 < a < 0.1 for a in log["alpha"])


def test_arm_frame_loss_features_turn_with_arm_and_goal_and_feed_only_the_loss():
    from sb3_ml3.model_based.mbrl_envs import reacher_arm_frame

    state = torch.tensor([[0.3, 1.1, 2.0, -1.5], [-2.0, -0.4, 0.1, 0.7]])
    goal = torch.tensor([[0.12, -0.05], [-0.03, 0.15]])
    turn = 0.9  # the shoulder and the goal turned together about the base: the same task
    rot = torch.tensor([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]], dtype=torch.float32)
    turned = state.clone()
    turned[:, 0] += turn
    torch.testing.assert_close(reacher_arm_frame(turned, goal @ rot.T), reacher_arm_frame(state, goal), atol=1e-5,
                               rtol=1e-5)
    assert not torch.allclose(reacher_arm_frame(state, goal @ rot.T), reacher_arm_frame(state, goal), atol=1e-3)
    config = MBRLConfig(horizon=5, n_outer=2, model_every=100, random_episodes=4, model_epochs=1, batch_goals=2,
                        inner_steps=1, loss_features="arm-frame", inner_optimizer="adam", alpha_max=0.1,
                        alpha_init=0.02, target_bound=0.9)
    experiment = MBRLExperiment("ReacherGoal4D-v0", config, seed=0)
    assert experiment.meta_loss.feature_dim == 7 and experiment.policy.widths[0] == experiment.env.feature_dim
    features, context = experiment.contexts(state[:, None].expand(-1, 3, -1), goal)
    assert features.shape == (2, 3, 10) and context.shape == (2, 3, 7)
    assert np.isfinite(experiment.meta_train()["task_loss"]).all()
    with pytest.raises(ValueError, match="not defined for PointmassGoal"):
        MBRLExperiment("PointmassGoal-v0", MBRLConfig(loss_features="arm-frame"), seed=0)

    # policy_features: the policies (ML3's, the baselines', the real env's actor) read the arm's frame too
    policy_frame = MBRLExperiment("ReacherGoal4D-v0", MBRLConfig(**{**config.__dict__, "policy_features": "arm-frame"}),
                                  seed=0)
    assert policy_frame.policy.widths[0] == 7 and policy_frame.env.feature_dim == 7
    features, context = policy_frame.contexts(state[:, None], goal)
    torch.testing.assert_close(features, context)
    theta = policy_frame.policy.init(2, torch.Generator().manual_seed(1))
    obs = torch.cat([state, goal], -1).numpy()
    torch.testing.assert_close(torch.as_tensor(policy_frame.actor(theta)(obs)),
                               policy_frame.policy(theta, reacher_arm_frame(state, goal)[:, None])[:, 0])
    assert np.isfinite(policy_frame.meta_train()["task_loss"]).all()
    assert mbrl_env("ReacherGoal4D-v0").feature_dim == 10  # the env's own description is left as it was
    with pytest.raises(ValueError, match="policy_features 'arm-frame' is not defined for PointmassGoal"):
        MBRLExperiment("PointmassGoal-v0", MBRLConfig(policy_features="arm-frame"), seed=0)


def test_meta_validation_scores_on_train_goals_and_restores_the_best_weights(monkeypatch):
    from sb3_ml3.model_based import mbrl_validation

    config = MBRLConfig(horizon=5, n_outer=6, model_every=100, random_episodes=4, model_epochs=1, batch_goals=2,
                        inner_steps=1, n_test_goals=2, val_every=2, val_updates=2)
    experiment = MBRLExperiment("PointmassGoal-v0", config, seed=0)
    seen_goals, snapshots = [], []
    scores = iter([0.5, 0.3, 0.4, 0.9, 0.2, 0.1])  # outer 0, 2, 4, 6: the best is at outer 2 (then a 2-outer run)
    original = mbrl_validation.KeepBest.score

    def fake_score(self):
        original(self)  # the real meta-test runs (and counts its env steps)
        snapshots.append({k: v.clone() for k, v in self.experiment.meta_loss.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(mbrl_validation.KeepBest, "score", fake_score)
    real_envs = mbrl_validation.RealEnvs
    monkeypatch.setattr(mbrl_validation, "RealEnvs", lambda env_id, goals: seen_goals.append(goals) or
                        real_envs(env_id, goals))
    log = experiment.meta_train()["validation"]
    assert [h["outer"] for h in log["scores"]] == [0, 2, 4, 6] and log["kept_outer"] == 2
    assert log["env_steps"] == 4 * 3 * 2 * 5  # 4 scores x 3 rollouts x 2 goals x 5 steps
    state = experiment.meta_loss.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(snapshots[1][k], snapshots[3][k]) for k in state)  # meta-training moved it after
    train = sample_tasks("PointmassGoal-v0", 2, "train", seed=0 * 100_003 + mbrl_validation.VALIDATION_GOALS_OFFSET)
    assert all(np.array_equal(g, train) for g in seen_goals)  # the same train-split goals every time
    seen_goals.clear()  # val_goals: that many train goals per score (the first ones of the same seeded draw)
    experiment = MBRLExperiment("PointmassGoal-v0", replace(config, n_outer=2, val_goals=3), seed=0)
    experiment.meta_train()
    assert len(seen_goals) == 2 and all(len(g) == 3 for g in seen_goals)
    with pytest.raises(ValueError, match="val_goals"):
        MBRLConfig(val_goals=-1)
    off = MBRLExperiment("PointmassGoal-v0", MBRLConfig(horizon=5, n_outer=2, model_every=100, random_episodes=4,
                                                        model_epochs=1, batch_goals=2, inner_steps=1), seed=0)
    assert off.meta_train()["validation"] == {}


def test_meta_restarts_train_independent_losses_and_keep_the_best_validation_score(monkeypatch):
    """--meta-restarts R: R meta-trainings of one seed from their own draws; the lowest validation score on train
    goals is kept and logged; above 1 without validation it is refused."""
    from sb3_ml3.model_based import mbrl_cli, mbrl_validation

    config = MBRLConfig(horizon=5, n_outer=2, model_every=100, random_episodes=4, model_epochs=1, batch_goals=2,
                        inner_steps=1, n_test_goals=2, val_every=2, val_updates=1, meta_restarts=3)
    scores = iter([0.5, 0.4, 0.2, 0.3, 0.6, 0.7])  # restart r scores at outer 0 and 2: best 0.4, 0.2, 0.6
    monkeypatch.setattr(mbrl_validation.KeepBest, "score", lambda self: next(scores))
    built = []
    original = mbrl_cli.MBRLExperiment

    def recording(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(mbrl_cli, "MBRLExperiment", recording)
    experiment, log = mbrl_cli.meta_train_with_restarts("PointmassGoal-v0", config, 0, lambda *a: None)
    assert [e.restart for e in built] == [0, 1, 2] and experiment is built[1]
    assert log["restarts"] == {"scores": [0.4, 0.2, 0.6], "kept": 1} and log["validation"]["kept_score"] == 0.2
    draws = [next(iter(MBRLExperiment("PointmassGoal-v0", config, 0, r).meta_loss.parameters())) for r in (0, 1, 0)]
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])  # each restart its own draw
    assert experiment.meta_loss.metadata["restart"] == 1
    with pytest.raises(ValueError, match="val_every"):
        MBRLExperiment("PointmassGoal-v0", MBRLConfig(meta_restarts=2), seed=0)


def test_task_model_from_restarts_tunes_the_model_baseline_on_every_restarts_model(monkeypatch):
    """--task-model-from restarts: the task loss through the model is tuned on train goals with each restart's P and
    keeps the lowest score (its choice and every score logged); "kept" tunes only the kept restart's P."""
    from sb3_ml3.model_based import mbrl_baselines, mbrl_cli, mbrl_validation

    config = MBRLConfig(horizon=5, n_outer=2, model_every=100, random_episodes=4, model_epochs=1, batch_goals=2,
                        inner_steps=1, n_test_goals=2, val_every=2, val_updates=1, meta_restarts=3, test_updates=2,
                        task_grid=(("adam", 0.01),), task_model_from="restarts")
    scores = iter([0.5, 0.4, 0.2, 0.3, 0.6, 0.7])  # restart 1 is kept for ML3
    monkeypatch.setattr(mbrl_validation.KeepBest, "score", lambda self: next(scores))
    experiment, log = mbrl_cli.meta_train_with_restarts("PointmassGoal-v0", config, 0, lambda *a: None)
    assert experiment.restart == 1 and [r for r, _ in experiment.restart_models] == [0, 1, 2]
    tuned_on = []
    original = mbrl_baselines.tune_task_loss

    def recording(exp, step, updates, real_states=False):
        tuned_on.append(step)
        return original(exp, step, updates, real_states)

    monkeypatch.setattr(mbrl_baselines, "tune_task_loss", recording)
    step, tuned, chosen_scores, choice = mbrl_baselines.tune_model_baseline(experiment)
    assert tuned_on == [m for _, m in experiment.restart_models]  # every restart's P was tried
    by_restart = choice["task_tuning_scores_model_by_restart"]
    best = min(by_restart, key=lambda r: min(by_restart[r].values()))
    assert choice["task_model_restart"] == int(best) and chosen_scores == by_restart[best]
    assert step is dict(experiment.restart_models)[int(best)]
    assert len({min(v.values()) for v in by_restart.values()}) == 3  # the three models differ
    tuned_on.clear()
    experiment.config = replace(config, task_model_from="kept")
    step, _, _, choice = mbrl_baselines.tune_model_baseline(experiment)
    assert tuned_on == [experiment.model] and step is experiment.model and choice == {}
    with pytest.raises(ValueError, match="task_model_from"):
        MBRLConfig(task_model_from="best")


def test_minimiser_is_the_quadratic_losss_argmin_and_its_task_loss_joins_the_meta_objective():
    """LossAndRate.minimiser: M is zero there with zero action-gradient; minimiser_weight adds its final distance in P,
    whose phi-gradient matches central differences; refused where the loss form has no closed-form minimiser."""
    torch.manual_seed(0)
    meta = LossAndRate(7, 2, (16,), 0.1, 0.02, generator=torch.Generator().manual_seed(1), target_bound=0.9)
    context = torch.randn(3, 5, 7)
    target = meta.minimiser(context)
    assert target.shape == (3, 5, 2) and float(target.abs().max()) <= 0.9
    action = target.clone().requires_grad_(True)
    loss, _ = meta(context, action, action.detach())
    assert float(loss.abs().max()) < 1e-10
    assert float(torch.autograd.grad(loss.sum(), action)[0].abs().max()) < 1e-8
    moved, _ = meta(context, target + 0.1, target)
    assert float(moved.min()) > 0
    with pytest.raises(ValueError, match="absolute target"):
        LossAndRate(7, 2, (16,), loss_form="free").minimiser(context)
    with pytest.raises(ValueError, match="absolute target"):
        MBRLConfig(minimiser_weight=1.0, relative_target=True)
    with pytest.raises(ValueError, match="minimiser_weight"):
        MBRLConfig(minimiser_weight=-1.0)

    values = []
    for weight in (0.0, 3.0):
        experiment = MBRLExperiment("PointmassGoal-v0", MBRLConfig(horizon=5, inner_steps=1, batch_goals=2,
                                                                   minimiser_weight=weight), seed=0)
        theta = experiment.policy.init(2, torch.Generator().manual_seed(3))
        phi = {k: v.detach() for k, v in experiment.meta_loss.named_parameters()}
        start, goals = torch.zeros(2, 4), torch.tensor([[1.0, 0.0], [0.0, -1.0]])
        value = experiment.meta_objective(phi, theta, start, goals)[0]
        values.append((float(value), float(experiment.minimiser_distance(phi, start, goals).mean())))
    assert values[1][1] > 0 and values[1][0] == pytest.approx(values[0][0] + 3.0 * values[1][1], rel=1e-5)

    experiment.model.double()
    phi = {k: v.detach().double() for k, v in experiment.meta_loss.named_parameters()}
    start, goals = start.double(), goals.double()
    experiment.meta_loss.double()
    leaf = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    analytic = torch.autograd.grad(experiment.minimiser_distance(leaf, start, goals).sum(), list(leaf.values()),
                                   allow_unused=True)
    for (name, value), g in zip(phi.items(), analytic):
        if not name.startswith("loss_net."):
            assert g is None  # the rate net plays no part in the minimiser
            continue
        index = (0,) * value.dim()
        plus, minus = dict(phi), dict(phi)
        bump = torch.zeros_like(value)
        bump[index] = 1e-6
        plus[name], minus[name] = value + bump, value - bump
        numeric = (experiment.minimiser_distance(plus, start, goals).sum()
                   - experiment.minimiser_distance(minus, start, goals).sum()) / 2e-6
        assert float(g[index]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8)

    # the real env's rollout of the minimiser as a controller, what the meta-test reports beside ML3
    experiment.meta_loss.float()
    act = experiment.minimiser_actor()
    obs = np.array([[0.3, -0.2, 0.1, 0.0, 1.0, 0.5]], dtype=np.float32)
    context = experiment.contexts(torch.as_tensor(obs[:, None, :4]), torch.as_tensor(obs[:, 4:]))[1]
    assert np.allclose(act(obs), experiment.meta_loss.minimiser(context)[:, 0].detach().numpy())


def test_task_loss_baselines_choose_their_policy_class_on_train_goals(monkeypatch):
    """task_policy_features: the baselines tune (policy class, optimizer, step size) on train goals; a class other
    than ML3's reads its own features; ML3's class starts from ML3's initial policies."""
    from sb3_ml3.model_based import mbrl_baselines
    from sb3_ml3.model_based.dynamics import RealEnvs

    config = MBRLConfig(horizon=4, inner_steps=1, n_test_goals=2, loss_features="arm-frame",
                        policy_features="arm-frame", task_policy_features=("state", "arm-frame"),
                        task_grid=(("adam", 0.01), ("sgd", 0.01)), inner_optimizer="adam", alpha_max=0.1,
                        alpha_init=0.02, target_bound=0.9)
    experiment = MBRLExperiment("ReacherGoal4D-v0", config, seed=0)
    state_policy, state_env = mbrl_baselines.policy_class(experiment, "state")
    assert state_policy.widths[0] == 10 and state_env.feature_dim == 10 and experiment.policy.widths[0] == 7
    assert mbrl_baselines.policy_class(experiment, "arm-frame")[0] is experiment.policy
    mine = mbrl_baselines.starting_policies(experiment, "arm-frame", 2, 5)
    same = experiment.initial_policies(2, torch.Generator().manual_seed(5))
    assert all(torch.equal(mine[k], same[k]) for k in same)
    assert mbrl_baselines.starting_policies(experiment, "state", 2, 5)["w0"].shape[1] == 10

    seen = []
    original = mbrl_baselines.optimise_task_loss
    monkeypatch.setattr(mbrl_baselines, "optimise_task_loss",
                        lambda exp, envs, theta, updates, opt, lr, step, features, real=False: seen.append(
                            (features, theta["w0"].shape[1])) or original(exp, envs, theta, updates, opt, lr, step,
                                                                          features, real))
    tuned, scores = mbrl_baselines.tune_task_loss(experiment, experiment.env.exact_step_fn(), 2)
    assert sorted(scores) == ["arm-frame adam 0.01", "arm-frame sgd 0.01", "state adam 0.01", "state sgd 0.01"]
    assert sorted(set(seen)) == [("arm-frame", 7), ("state", 10)]
    assert scores[" ".join([tuned[0], tuned[1], f"{tuned[2]:g}"])] == min(scores.values())
    envs = RealEnvs("ReacherGoal4D-v0", sample_tasks("ReacherGoal4D-v0", 2, "test", seed=1))
    try:
        theta = mbrl_baselines.starting_policies(experiment, "state", 2, 9)
        out = original(experiment, envs, theta, 2, "adam", 0.01, experiment.env.exact_step_fn(), "state")
    finally:
        envs.close()
    assert out["policy_features"] == "state" and len(out["final_distance"]) == 3
    with pytest.raises(ValueError, match="task_policy_features 'arm-frame' is not defined for PointmassGoal"):
        MBRLExperiment("PointmassGoal-v0", MBRLConfig(task_policy_features=("arm-frame",)), seed=0)
