"""The ``policy_age`` meta-input (inner updates since the policy was made) and widening a target loss to read it."""

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from sb3_ml3 import ML3, MetaLoss, MetaLossSpecError
from sb3_ml3.ml3.meta_inputs import POLICY_AGE_HALF
from sb3_ml3.surrogates import widen_target_context

ENV = "PointmassGoal-v0"
INPUTS = ("obs", "action", "mean", "std", "goal", "advantage", "old_log_prob", "policy_age")
SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, policy_kwargs={"net_arch": [8]}, meta_inputs=INPUTS,
             meta_loss_kwargs={"hidden_sizes": (8,), "surrogate": "ppo", "correction": "target"})


def _vec(n=2):
    return make_vec_env(ENV, n_envs=n, seed=0, env_kwargs={"task_split": "train"})


def _spy_ages(model: ML3) -> list[list[float]]:
    """Record the ``policy_ages`` of the minibatches of every inner update (each a sorted list of its values)."""
    seen: list[list[float]] = []
    inner_step = model.inner_step

    def recording(minibatches, trace=None):
        seen.append(sorted({a for batch in minibatches for a in batch["policy_ages"].tolist()}))
        return inner_step(minibatches, trace)

    model.inner_step = recording
    return seen


def test_the_age_counts_inner_updates_and_reaches_the_loss_as_k_over_k_plus_half():
    model = ML3("MlpPolicy", _vec(), seed=0, meta_train=False, **SMALL)
    assert model.meta_loss.correction_fields == ("obs", "goal", "policy_age")  # a target reads it by default
    seen = _spy_ages(model)
    model.learn(4 * 16 * 2)
    assert model.actor_age == 4
    assert seen == [[k] for k in range(4)]  # each update's minibatches carry the age its rollout was collected at
    batch = model._minibatches()[0]  # the last rollout, collected at age 3
    mean, std = model.policy.actor_mean_std(None, batch["observations"])
    ages = model.inputs.fields(batch, mean, std)["policy_age"]
    assert torch.allclose(ages, torch.full_like(ages, 3 / (3 + POLICY_AGE_HALF)))  # k / (k + half): below 1


def test_meta_training_resets_the_age_with_the_actor_and_a_saved_model_keeps_it(tmp_path):
    model = ML3("MlpPolicy", _vec(), seed=0, meta_train=True, policy_reset_interval=3, **SMALL)
    seen = _spy_ages(model)
    model.learn(5 * 16 * 2)  # iterations 1, 2 update (ages 0, 1); 3 resets; 4, 5 update (ages 0, 1)
    assert model.actor_age == 2 and model.n_meta_updates >= 1
    assert seen == [[0], [1], [0], [1]]
    model.save(tmp_path / "m.zip")
    assert ML3.load(tmp_path / "m.zip", env=_vec()).actor_age == 2


def test_a_widened_target_loss_starts_as_the_same_function_and_can_learn_to_read_the_age(tmp_path):
    loss = MetaLoss("obs:3, action:2, mean:2, std:2, goal:2, advantage:1, old_log_prob:1", hidden_sizes=(8,),
                    surrogate="ppo", correction="target", metadata={"meta_inputs": list(INPUTS[:-1])})
    with torch.no_grad():
        for p in loss.net.parameters():
            p.normal_()
    wide = widen_target_context(loss, [("policy_age", 1)])
    assert wide.correction_fields == ("obs", "goal", "policy_age") and wide.metadata["meta_inputs"] == list(INPUTS)
    g = torch.Generator().manual_seed(0)
    fields = {name: torch.randn(16, width, generator=g) for name, width in loss.spec.fields}
    fields["std"] = fields["std"].abs() + 0.1
    for age in (0.0, 0.5, 0.9):
        aged = dict(fields, policy_age=torch.full((16,), age))  # width-1 inputs may come without their last dim
        torch.testing.assert_close(wide.surrogate_parts(aged), loss.surrogate_parts(fields))
        torch.testing.assert_close(wide.pull_target(aged), loss.pull_target(fields))
    with torch.no_grad():
        wide.net[0].weight[:, -1].normal_(generator=g)
    young, old = (wide.pull_target(dict(fields, policy_age=torch.full((16,), a)))[1] for a in (0.0, 0.9))
    assert not torch.allclose(young, old)  # once trained, the weight can depend on the age
    wide.save(tmp_path / "wide.zip")
    torch.testing.assert_close(MetaLoss.load(tmp_path / "wide.zip").pull_target(dict(fields, policy_age=torch.ones(16))),
                               wide.pull_target(dict(fields, policy_age=torch.ones(16))))
    with pytest.raises(MetaLossSpecError, match="already reads"):
        widen_target_context(wide, [("policy_age", 1)])
    with pytest.raises(MetaLossSpecError, match="correction='target'"):
        widen_target_context(MetaLoss("obs:3, mean:2", hidden_sizes=(4,)), [("policy_age", 1)])


def test_pull_updates_lets_the_target_act_on_a_policys_first_updates_only(tmp_path):
    """pull_updates K: the weight is the learned one for ages 0..K-1 and exactly 0 from K on (then M is PPO's
    surrogate); it needs the policy_age input; the setting round-trips."""
    spec = "obs:3, action:2, mean:2, std:2, goal:2, advantage:1, old_log_prob:1, policy_age:1"
    loss = MetaLoss(spec, hidden_sizes=(8,), surrogate="ppo", correction="target", pull_updates=3)
    with torch.no_grad():
        for p in loss.net.parameters():
            p.normal_()
    g = torch.Generator().manual_seed(1)
    fields = {name: torch.randn(4, width, generator=g) for name, width in loss.spec.fields}
    fields["std"] = fields["std"].abs() + 0.1
    weights = []
    for k in range(6):
        age = torch.full((4,), k / (k + POLICY_AGE_HALF))  # as ML3 feeds it (tests above)
        weights.append(loss.pull_target(dict(fields, policy_age=age))[1])
        correction = loss.surrogate_parts(dict(fields, policy_age=age))[1]
        assert (correction > 0).all() if k < 3 else torch.equal(correction, torch.zeros(4))
    assert all((w > 0).all() for w in weights[:3]) and all(torch.equal(w, torch.zeros(4)) for w in weights[3:])
    loss.save(tmp_path / "gated.zip")
    assert MetaLoss.load(tmp_path / "gated.zip").pull_updates == 3
    with pytest.raises(MetaLossSpecError, match="pull_updates"):
        MetaLoss(spec.replace(", policy_age:1", ""), surrogate="ppo", correction="target", pull_updates=3)
    for bad in (0, 2.7, True, "3"):  # a count, not something that int() would cut or coerce
        with pytest.raises(MetaLossSpecError, match="pull_updates"):
            MetaLoss(spec, surrogate="ppo", correction="target", pull_updates=bad)


def test_pull_scale_multiplies_the_learned_pull_weight_and_nothing_else(tmp_path):
    """pull_scale k: w(c) is k times the learned weight for every context, the target and PPO's surrogate are
    unchanged, the gate still cuts at pull_updates; the setting round-trips and nonsense values are refused."""
    spec = "obs:3, action:2, mean:2, std:2, goal:2, advantage:1, old_log_prob:1, policy_age:1"
    plain = MetaLoss(spec, hidden_sizes=(8,), surrogate="ppo", correction="target", pull_updates=3)
    with torch.no_grad():
        for p in plain.net.parameters():
            p.normal_()
    scaled = MetaLoss.from_config({**plain.config(), "pull_scale": 7.5}, plain.state_dict())
    g = torch.Generator().manual_seed(2)
    fields = {name: torch.randn(5, width, generator=g) for name, width in plain.spec.fields}
    fields["std"] = fields["std"].abs() + 0.1
    for k in (0, 2, 3):
        age = dict(fields, policy_age=torch.full((5,), k / (k + POLICY_AGE_HALF)))
        (t0, w0), (t1, w1) = plain.pull_target(age), scaled.pull_target(age)
        torch.testing.assert_close(t1, t0)
        torch.testing.assert_close(w1, 7.5 * w0)
        assert (w1 > 0).all() if k < 3 else torch.equal(w1, torch.zeros(5))
        (s0, c0), (s1, c1) = plain.surrogate_parts(age), scaled.surrogate_parts(age)
        torch.testing.assert_close(s1, s0)
        torch.testing.assert_close(c1, 7.5 * c0)
    scaled.save(tmp_path / "scaled.zip")
    loaded = MetaLoss.load(tmp_path / "scaled.zip")
    assert loaded.pull_scale == 7.5 and plain.pull_scale is None
    torch.testing.assert_close(loaded.pull_target(fields)[1], scaled.pull_target(fields)[1])
    for bad in (0, -1.0, float("inf"), float("nan"), True, "2"):
        with pytest.raises(MetaLossSpecError, match="pull_scale"):
            MetaLoss(spec, surrogate="ppo", correction="target", pull_scale=bad)
    with pytest.raises(MetaLossSpecError, match="pull_scale"):
        MetaLoss(spec, surrogate="ppo", correction="penalty", pull_scale=2.0)


def test_pull_learning_rate_is_the_inner_step_size_of_the_pulled_updates_only_and_the_outer_step_uses_it(tmp_path):
    """With pull_updates K and pull_learning_rate r, the inner updates of a policy aged 0..K-1 take steps of size r
    (the optimizer's lr and the step the outer step differentiates), later ones ML3's own; a reset actor is pulled
    again. A loss without it, or without pull_updates, is refused or left alone."""
    kwargs = dict(SMALL, learning_rate=1e-3,
                  meta_loss_kwargs=dict(SMALL["meta_loss_kwargs"], pull_updates=1, pull_learning_rate=0.05))
    for meta_train, expected in ((False, [0.05, 1e-3, 1e-3]), (True, [0.05, 1e-3, 0.05, 1e-3])):
        model = ML3("MlpPolicy", _vec(), seed=0, meta_train=meta_train, policy_reset_interval=3 if meta_train else None,
                    **kwargs)
        rates, pending = [], []
        inner_step = model.inner_step

        def recording(minibatches, trace=None, model=model, inner_step=inner_step):
            rates.append(model.policy.optimizer.param_groups[0]["lr"])
            if model._pending is not None:
                pending.append(model._pending[2])
            return inner_step(minibatches, trace)

        model.inner_step = recording
        model.learn((5 if meta_train else 3) * 16 * 2)
        assert rates == pytest.approx(expected)
        assert pending == (pytest.approx(expected) if meta_train else [])
    model.save(tmp_path / "m.zip")  # the setting travels with the model's meta-loss
    loaded = ML3.load(tmp_path / "m.zip", env=_vec())
    assert (loaded.meta_loss.pull_learning_rate, loaded.meta_loss.pull_updates) == (0.05, 1)
    plain = ML3("MlpPolicy", _vec(), seed=0, meta_train=False, **dict(SMALL, learning_rate=1e-3))
    assert plain.meta_loss.pull_learning_rate is None
    with pytest.raises(MetaLossSpecError, match="pull_learning_rate"):
        MetaLoss("obs:3, action:2, mean:2, std:2, goal:2, advantage:1, old_log_prob:1, policy_age:1",
                 surrogate="ppo", correction="target", pull_learning_rate=0.05)  # no pull_updates: it would never end
