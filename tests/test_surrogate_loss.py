"""The PPO-family meta-loss: PPO's clipped surrogate plus a learned correction that starts at zero."""

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from torch.distributions import Normal

from sb3_ml3 import ML3, MetaLoss, MetaLossSpecError
from sb3_ml3.meta_loss import ppo_surrogate
from sb3_ml3.functional import meta_gradient, parameters_of

SPEC = "obs:3, action:2, mean:2, std:2, goal:2, advantage:1, old_log_prob:1"
PPO_INPUTS = ("obs", "action", "mean", "std", "goal", "advantage", "old_log_prob")


def _fields(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, 2, generator=g)
    std = 0.5 + torch.rand(n, 2, generator=g)
    action = mean + std * torch.randn(n, 2, generator=g)
    old = Normal(mean + 0.3 * torch.randn(n, 2, generator=g), std).log_prob(action).sum(-1)
    return {"obs": torch.randn(n, 3, generator=g), "action": action, "mean": mean, "std": std,
            "goal": torch.randn(n, 2, generator=g), "advantage": torch.randn(n, generator=g), "old_log_prob": old}


def test_a_new_surrogate_loss_is_exactly_ppos_clipped_surrogate():
    loss = MetaLoss(SPEC, hidden_sizes=(16,), surrogate="ppo", clip_range=0.2)
    f = _fields()
    ratio = torch.exp(Normal(f["mean"], f["std"]).log_prob(f["action"]).sum(-1) - f["old_log_prob"])
    expected = -torch.min(ratio * f["advantage"], torch.clamp(ratio, 0.8, 1.2) * f["advantage"])
    assert ((ratio < 0.8) | (ratio > 1.2)).any()  # the clip is exercised
    assert torch.allclose(loss(f), expected, atol=1e-5)
    base, correction = loss.surrogate_parts(f)
    assert torch.equal(correction, torch.zeros_like(correction))


def test_its_meta_gradient_is_not_zero_and_moves_the_update():
    """theta' depends on phi through the correction from the first outer step (its last layer's gradient)."""
    torch.manual_seed(0)
    loss = MetaLoss(SPEC, hidden_sizes=(16,), surrogate="ppo").double()
    f = {k: v.double() for k, v in _fields().items()}
    params = {"w": torch.zeros(2, 3, dtype=torch.float64), "log_std": torch.zeros(2, dtype=torch.float64)}

    def learned(theta, phi, batch):
        fields = dict(batch, mean=batch["obs"] @ theta["w"].T, std=torch.exp(theta["log_std"]).expand(len(batch["obs"]), 2))
        return torch.func.functional_call(loss, phi, (fields,)).mean()

    def task(theta, batch):
        return ((batch["obs"] @ theta["w"].T - 1.0) ** 2).mean()

    grads, _ = meta_gradient(learned, task, params, parameters_of(loss), f, f, 0.1)
    assert float(grads["net.2.weight"].abs().sum()) > 1e-6


def test_surrogate_settings_round_trip_and_bad_ones_are_refused(tmp_path):
    loss = MetaLoss(SPEC, hidden_sizes=(8,), surrogate="ppo", clip_range=0.1)
    with torch.no_grad():
        loss.net[-1].weight.normal_()
    loss.save(tmp_path / "l.zip")
    back = MetaLoss.load(tmp_path / "l.zip")
    assert back.surrogate == "ppo" and back.clip_range == pytest.approx(0.1)
    f = _fields()
    assert torch.allclose(back(f), loss(f))
    with pytest.raises(MetaLossSpecError, match="lacks \\['old_log_prob'\\]"):
        MetaLoss("obs:3, action:2, mean:2, std:2, advantage:1", surrogate="ppo")
    with pytest.raises(MetaLossSpecError, match="Unknown surrogate"):
        MetaLoss(SPEC, surrogate="trpo")
    with pytest.raises(MetaLossSpecError, match="clip_range"):
        MetaLoss(SPEC, surrogate="ppo", clip_range=1.5)


def test_ml3_with_a_fresh_ppo_family_loss_and_adam_learns_like_ppo():
    """At zero correction ML3's update is PPO's actor update (Adam on the clipped surrogate): on ReacherGoal it
    must learn as PPO does with the same settings (both -13.2 at the start, about -8.5 after 8k samples)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_ml3.evaluation import evaluate_task_metric

    goals = np.array([[0.1, 0.1], [-0.12, 0.05], [0.05, -0.15]])
    finals = {}
    for algo in ("ml3", "ppo"):
        env = VecNormalize(make_vec_env("ReacherGoal-v0", n_envs=4, seed=0, env_kwargs={"task_split": "train"}))
        common = dict(n_steps=256, batch_size=64, n_epochs=10, learning_rate=3e-4, policy_kwargs={"net_arch": [32]},
                      seed=0)
        if algo == "ml3":
            model = ML3("MlpPolicy", env, max_grad_norm=0.5, vf_learning_rate=3e-4, inner_optimizer="adam",
                        meta_inputs=PPO_INPUTS, meta_loss_kwargs={"surrogate": "ppo", "hidden_sizes": (16,)}, **common)
            assert isinstance(model.policy.optimizer, torch.optim.Adam)
        else:
            model = PPO("MlpPolicy", env, **common)
        before = np.mean(evaluate_task_metric(model, "ReacherGoal-v0", goals, seed=0, vec_normalize=env))
        model.learn(8192)
        finals[algo] = np.mean(evaluate_task_metric(model, "ReacherGoal-v0", goals, seed=0, vec_normalize=env))
        assert finals[algo] > before + 2.0, (algo, before, finals[algo])
    assert abs(finals["ml3"] - finals["ppo"]) < 2.0, finals


def test_meta_training_a_ppo_family_loss_changes_its_correction_only_through_outer_steps():
    env = make_vec_env("PointmassGoal-v0", n_envs=2, seed=0, env_kwargs={"task_split": "train"})
    model = ML3("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=2, learning_rate=1e-3, inner_optimizer="adam",
                meta_inputs=PPO_INPUTS, meta_train=True, meta_lr=1e-2, task_clip_range=0.2,
                meta_loss_kwargs={"surrogate": "ppo", "hidden_sizes": (8,)}, policy_kwargs={"net_arch": [8]}, seed=0)
    start = {k: v.detach().clone() for k, v in model.meta_loss.state_dict().items()}
    model.learn(32 * 2 * 4)
    assert model.n_meta_updates == 3  # one per rollout after the first
    moved = [k for k, v in model.meta_loss.state_dict().items() if not torch.equal(v, start[k])]
    assert "net.2.weight" in moved
    assert all(torch.isfinite(v).all() for v in model.meta_loss.state_dict().values())


def test_a_drift_correction_reads_only_the_ratio_and_the_advantage(tmp_path):
    loss = MetaLoss(SPEC, hidden_sizes=(8,), surrogate="ppo", correction_fields=("advantage",))
    assert loss.net[0].in_features == 2  # the advantage and log r
    with torch.no_grad():
        loss.net[-1].weight.normal_()
    f = _fields()
    moved = dict(f, obs=f["obs"] + 5.0, goal=-f["goal"])
    assert torch.equal(loss(f), loss(moved))  # blind to the state and the goal: no target action to teach
    loss.save(tmp_path / "drift.zip")
    back = MetaLoss.load(tmp_path / "drift.zip")
    assert back.correction_fields == ("advantage",) and torch.allclose(back(f), loss(f))
    with pytest.raises(MetaLossSpecError, match="correction_fields"):
        MetaLoss(SPEC, surrogate="ppo", correction_fields=("reward",))
    with pytest.raises(MetaLossSpecError, match="correction_fields"):
        MetaLoss("y_pred:1, y_target:1", correction_fields=("y_pred",))


def test_a_penalty_correction_is_a_learned_trust_region():
    """(log r)^2 softplus(net): never negative, zero at r = 1, and starts within 3e-4 of PPO's surrogate."""
    loss = MetaLoss(SPEC, hidden_sizes=(8,), surrogate="ppo", correction="penalty")
    f = _fields()
    _, correction = loss.surrogate_parts(f)
    _, log_ratio = ppo_surrogate(f, 0.2)
    small = log_ratio.abs() < 0.2
    assert small.any() and (correction[small] < 3e-4).all() and (correction >= 0).all()
    with torch.no_grad():
        for p in loss.net.parameters():
            p.normal_()
    _, correction = loss.surrogate_parts(f)
    assert (correction >= 0).all() and correction.max() > 1e-3
    at_one = dict(f, old_log_prob=Normal(f["mean"], f["std"]).log_prob(f["action"]).sum(-1))
    assert torch.allclose(loss.surrogate_parts(at_one)[1], torch.zeros(len(f["obs"])), atol=1e-10)
    with pytest.raises(MetaLossSpecError, match="Unknown correction"):
        MetaLoss(SPEC, surrogate="ppo", correction="bonus")


def test_a_target_correction_pulls_the_mean_to_a_learned_action_of_the_state_and_goal(tmp_path):
    """w(c) ||mean - t(c)||^2 with c = (obs, goal): starts as a weak pull to the zero action, and its target
    reads the context only, so it can be evaluated as a policy and is blind to the policy's own outputs."""
    loss = MetaLoss(SPEC, hidden_sizes=(8,), surrogate="ppo", correction="target")
    assert loss.correction_fields == ("obs", "goal") and loss.net[0].in_features == 5
    f = _fields()
    _, correction = loss.surrogate_parts(f)
    target, weight = loss.pull_target(f)
    assert torch.equal(target, torch.zeros(64, 2)) and torch.allclose(weight, torch.full((64,), 0.0486), atol=1e-4)
    assert torch.allclose(correction, weight * (f["mean"] ** 2).sum(-1))
    with torch.no_grad():
        for p in loss.net.parameters():
            p.normal_()
    target, weight = loss.pull_target(f)
    assert torch.allclose(loss.surrogate_parts(f)[1], weight * ((f["mean"] - target) ** 2).sum(-1))
    assert torch.allclose(loss.surrogate_parts(dict(f, mean=target.detach()))[1], torch.zeros(64), atol=1e-6)
    # the gradient of the loss in the mean is the surrogate's plus 2 w (mean - t): finite differences agree
    mean = f["mean"].double().requires_grad_()
    loss = loss.double()
    fd = {k: v.double() for k, v in f.items()}
    (grad,) = torch.autograd.grad(loss.loss(dict(fd, mean=mean)), mean)
    i, j, h = 3, 1, 1e-6
    bumped = [mean.detach().clone() for _ in range(2)]
    bumped[0][i, j] += h
    bumped[1][i, j] -= h
    numeric = (loss.loss(dict(fd, mean=bumped[0])) - loss.loss(dict(fd, mean=bumped[1]))) / (2 * h)
    assert abs(float(grad[i, j]) - float(numeric)) < 1e-6
    loss.save(tmp_path / "target.zip")
    back = MetaLoss.load(tmp_path / "target.zip")
    assert back.correction == "target" and torch.allclose(back(fd), loss(fd))
    for bad in (("obs", "mean"), ("advantage",)):
        with pytest.raises(MetaLossSpecError, match="does not depend on the policy|do not depend on the policy"):
            MetaLoss(SPEC, surrogate="ppo", correction="target", correction_fields=bad)
    with pytest.raises(MetaLossSpecError, match="correction='target'"):
        MetaLoss("obs:3, mean:2, goal:2", correction="target")


def test_a_bounded_target_stays_inside_the_action_box_and_round_trips(tmp_path):
    """target_bound b: t = b tanh(.), so a pulled mean never goes past the bounds where the env clips every sample."""
    free = MetaLoss(SPEC, hidden_sizes=(8,), surrogate="ppo", correction="target")
    with torch.no_grad():
        for p in free.net.parameters():
            p.normal_(std=3.0)
    bounded = MetaLoss.from_config({**free.config(), "target_bound": 1.0}, free.state_dict())
    f = _fields()
    raw, weight = free.pull_target(f)
    target, same_weight = bounded.pull_target(f)
    assert raw.abs().max() > 2 and target.abs().max() <= 1.0
    torch.testing.assert_close(target, torch.tanh(raw))
    torch.testing.assert_close(same_weight, weight)
    bounded.save(tmp_path / "bounded.zip")
    back = MetaLoss.load(tmp_path / "bounded.zip")
    assert back.target_bound == 1.0 and torch.equal(back.pull_target(f)[0], target)
    for bad in (0.0, -1.0, float("inf"), float("nan"), "1", True):
        with pytest.raises(MetaLossSpecError, match="target_bound"):
            MetaLoss(SPEC, surrogate="ppo", correction="target", target_bound=bad)
    with pytest.raises(MetaLossSpecError, match="target_bound"):
        MetaLoss(SPEC, surrogate="ppo", correction="free", target_bound=1.0)
