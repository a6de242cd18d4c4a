"""The model-based meta-loss's learned per-step weights (``--loss-time-weights``): where they start, what they leave
unchanged, that the meta-gradient reaches them (against central differences), persistence and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sb3_ml3.model_based.mbrl import MBRLConfig, MBRLExperiment
from sb3_ml3.model_based.mbrl_inner import InnerStep
from sb3_ml3.model_based.mbrl_nets import LossAndRate, PolicyBatch


def _pair(time_weight_init: str = "uniform") -> tuple[LossAndRate, LossAndRate]:
    """The same loss without and with per-step weights over 5 steps (equal weights otherwise), in float64."""
    plain = LossAndRate(6, 2, (8,), alpha_max=0.1, alpha_init=0.02, generator=torch.Generator().manual_seed(1),
                        target_bound=0.9).double()
    timed = LossAndRate(6, 2, (8,), alpha_max=0.1, alpha_init=0.02, generator=torch.Generator().manual_seed(1),
                        target_bound=0.9, time_steps=5, time_weight_init=time_weight_init).double()
    return plain, timed


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return (torch.randn(3, 5, 6, dtype=torch.float64, generator=g),
            torch.rand(3, 5, 2, dtype=torch.float64, generator=g) * 2 - 1)


def test_uniform_weights_start_as_the_plain_mean_and_late_ones_on_a_ramp():
    plain, timed = _pair()
    context, action = _batch()
    assert torch.equal(plain(context, action, action)[0], timed(context, action, action)[0])
    assert torch.equal(plain(context, action, action)[1], timed(context, action, action)[1])  # the rate ignores them
    _, late = _pair("late")
    np.testing.assert_allclose(late.log_time_weight.exp().detach().numpy(), [0.1, 0.55, 1.0, 1.45, 1.9], rtol=1e-6)
    # a weight of 2 on the last step adds exactly one more copy of that step's term to the mean
    with torch.no_grad():
        timed.log_time_weight[-1] = np.log(2.0)
    per_step = plain.loss_net({"context": context, "action": action})
    torch.testing.assert_close(timed(context, action, action)[0], (per_step.sum(-1) + per_step[:, -1]) / 5)
    # positive factors per step leave the quadratic form's minimiser where it was
    torch.testing.assert_close(late.minimiser(context), plain.minimiser(context))


def test_the_meta_gradient_reaches_the_time_weights_and_matches_central_differences():
    _, meta = _pair("late")
    policy = PolicyBatch(6, 2, (8,))
    theta = {k: v.double() for k, v in policy.init(3, torch.Generator().manual_seed(2)).items()}
    context, _ = _batch()
    recorded = policy(theta, context).detach()
    step = InnerStep(policy, meta, "adam", adam_eps=1e-2)
    wanted = torch.full((3, 5, 2), 0.3, dtype=torch.float64)

    def outer(phi):
        params, state = theta, None
        for _ in range(2):
            params, _, state = step(params, phi, context, recorded, state)
        return ((policy(params, context) - wanted) ** 2).sum()

    phi = {k: v.detach().clone() for k, v in meta.named_parameters()}
    grads = torch.func.grad(outer)(phi)["log_time_weight"]
    assert float(grads.abs().min()) > 0
    for index in range(5):
        plus, minus = dict(phi), dict(phi)
        bump = torch.zeros(5, dtype=torch.float64)
        bump[index] = 1e-6
        plus["log_time_weight"], minus["log_time_weight"] = phi["log_time_weight"] + bump, phi["log_time_weight"] - bump
        numeric = float((outer(plus) - outer(minus)) / 2e-6)
        assert float(grads[index]) == pytest.approx(numeric, rel=1e-4, abs=1e-10)


def test_time_weights_round_trip_and_bad_input_is_refused(tmp_path):
    _, timed = _pair("late")
    with torch.no_grad():
        timed.log_time_weight.add_(torch.linspace(-0.3, 0.2, 5, dtype=torch.float64))
    timed.save(tmp_path / "m.zip")
    back = LossAndRate.load(tmp_path / "m.zip").double()
    context, action = _batch()
    assert back.time_steps == 5  # the weights are stored as float32, like every LossAndRate weight
    torch.testing.assert_close(back.log_time_weight, timed.log_time_weight.float().double())
    torch.testing.assert_close(back(context, action, action)[0], timed(context, action, action)[0], rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="trajectories of 5 steps"):
        timed(context[:, :4], action[:, :4], action[:, :4])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="time_steps"):
            LossAndRate(6, 2, time_steps=bad)
    with pytest.raises(ValueError, match="time_weight_init"):
        LossAndRate(6, 2, time_steps=5, time_weight_init="early")
    with pytest.raises(ValueError, match="--loss-time-weights"):
        MBRLConfig(loss_time_weights="yes")


def test_meta_training_with_time_weights_moves_them_and_the_loss_has_the_horizons_length():
    config = MBRLConfig(inner_optimizer="adam", alpha_max=0.1, alpha_init=0.02, target_bound=0.9, horizon=6,
                        n_outer=3, model_every=100, random_episodes=8, model_epochs=1, batch_goals=2, inner_steps=2,
                        loss_time_weights="uniform", meta_lr=1e-2)
    exp = MBRLExperiment("PointmassGoal-v0", config, seed=0)
    assert exp.meta_loss.time_steps == 6
    log = exp.meta_train()
    assert np.isfinite(log["task_loss"]).all() and log["skipped_meta_steps"] == 0
    assert float(exp.meta_loss.log_time_weight.detach().abs().max()) > 1e-3  # the outer steps moved them
    assert MBRLExperiment("PointmassGoal-v0", MBRLConfig(horizon=6), seed=0).meta_loss.time_steps is None


def test_time_weight_lr_gives_the_weights_their_own_outer_step_and_bad_settings_are_refused():
    base = dict(inner_optimizer="adam", alpha_max=0.1, alpha_init=0.02, target_bound=0.9, horizon=6, n_outer=3,
                model_every=100, random_episodes=8, model_epochs=1, batch_goals=2, inner_steps=2,
                loss_time_weights="uniform", meta_lr=1e-3)
    moved, rest_moved = {}, {}
    for lr in (None, 0.1):
        exp = MBRLExperiment("PointmassGoal-v0", MBRLConfig(time_weight_lr=lr, **base), seed=0)
        start = {k: v.detach().clone() for k, v in exp.meta_loss.named_parameters()}
        groups = exp.meta_param_groups()
        assert sum(len(g["params"]) for g in groups) == len(start)  # every parameter of phi is stepped, once
        exp.meta_train()
        moved[lr] = float((exp.meta_loss.log_time_weight.detach() - start["log_time_weight"]).abs().max())
        rest_moved[lr] = max(float((p.detach() - start[k]).abs().max())
                             for k, p in exp.meta_loss.named_parameters() if k != "log_time_weight")
    # Adam moves a weight by about its step size per outer iteration: 3 steps at 1e-3, or at 0.1
    assert moved[None] <= 3.5e-3 and moved[0.1] > 0.05
    assert rest_moved[0.1] <= 3.5e-3  # the other parameters keep meta_lr
    with pytest.raises(ValueError, match="--loss-time-weights"):
        MBRLConfig(time_weight_lr=0.01)  # no weights to step
    with pytest.raises(ValueError, match="positive"):
        MBRLConfig(loss_time_weights="uniform", time_weight_lr=0.0)
