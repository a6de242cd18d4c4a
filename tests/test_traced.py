"""The traced first-order outer step (sb3_ml3.traced) equals the recomputed one, for SGD and Adam, with and
without a gradient clip, in the functional API and inside ML3."""

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn
from torch.func import functional_call, grad

from sb3_ml3 import ML3
from sb3_ml3.functional import SGD, Adam, clip_factor, clip_factor_slope, global_norm, meta_gradient, parameters_of
from sb3_ml3.traced import InnerTrace, decayed_cumsum, rule_cotangents, traced_meta_gradient


def _rel(a, b):
    num = sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5
    den = sum((b[k] ** 2).sum() for k in b) ** 0.5
    return float(num / den)


@pytest.mark.parametrize("with_state", [False, True])
def test_adam_cotangents_match_autograd(with_state):
    torch.manual_seed(0)
    k, d, lr = 7, 5, 0.05
    grads = torch.randn(k, d, dtype=torch.float64)
    v = torch.randn(d, dtype=torch.float64)
    rule = Adam(eps=1e-5)
    names = ["p"]
    state = (3, {"p": torch.randn(d, dtype=torch.float64) * 0.1}, {"p": torch.rand(d, dtype=torch.float64)}) \
        if with_state else None
    leaf = grads.clone().requires_grad_()
    params, st = {"p": torch.zeros(d, dtype=torch.float64)}, state
    for i in range(k):
        params, st = rule.step(params, {"p": leaf[i]}, lr, st)
    (params["p"] @ v).backward()
    ours = rule_cotangents(rule, state, grads, lr, v, names)
    assert torch.allclose(ours, leaf.grad, rtol=1e-9, atol=1e-12)
    sgd = rule_cotangents(SGD(), None, grads, lr, v)
    assert torch.allclose(sgd, (-lr * v).expand(k, d))


@pytest.mark.parametrize("beta", [0.9, 0.999])
def test_decayed_cumsum_is_the_recurrence(beta):
    torch.manual_seed(1)
    x = torch.randn(1000, 4, dtype=torch.float64)
    initial = torch.randn(4, dtype=torch.float64)
    y, expected = initial, []
    for row in x:
        y = beta * y + row
        expected.append(y)
    assert torch.allclose(decayed_cumsum(x, beta, initial), torch.stack(expected), rtol=1e-10, atol=1e-10)
    z, backward = torch.zeros(4, dtype=torch.float64), []
    for row in x.flip(0):
        z = row + beta * z
        backward.append(z)
    assert torch.allclose(decayed_cumsum(x, beta, reverse=True), torch.stack(backward).flip(0), rtol=1e-10, atol=1e-10)


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    meta = nn.Sequential(nn.Linear(2, 8), nn.Softplus(), nn.Linear(8, 1))

    def learned_loss(theta, phi, batch):
        pred = functional_call(model, theta, (batch["x"],))
        return functional_call(meta, phi, (torch.cat([pred, batch["y"]], 1),)).mean()

    def task_loss(theta, query):
        return ((functional_call(model, theta, (query["x"],)) - query["y"]) ** 2).mean()

    batches = [{"x": torch.randn(10, 3), "y": torch.randn(10, 1)} for _ in range(6)]
    query = {"x": torch.randn(20, 3), "y": torch.randn(20, 1)}
    return model, meta, learned_loss, task_loss, batches, query


@pytest.mark.parametrize("rule_name,clip,constant_scale", [
    ("sgd", None, False), ("sgd", 0.05, False), ("adam", None, False), ("adam", 0.05, False), ("adam", 0.05, True)])
def test_traced_meta_gradient_equals_the_unrolled_first_order_one(rule_name, clip, constant_scale):
    model, meta, learned_loss, task_loss, batches, query = _problem()
    theta, phi = parameters_of(model), parameters_of(meta)
    rule = SGD() if rule_name == "sgd" else Adam(eps=1e-5)
    lr = 0.1 if rule_name == "sgd" else 0.01
    state = None
    if rule_name == "adam":  # start from a used optimizer, as ML3's inner Adam does after its first update
        state = (2, {k: 0.01 * torch.randn_like(v) for k, v in theta.items()},
                 {k: 0.001 * torch.rand_like(v) for k, v in theta.items()})
    trace = InnerTrace(rule, lr, state, {k: v.detach().clone() for k, v in phi.items()})
    point, st = dict(theta), state
    for i, batch in enumerate(batches):
        h = grad(learned_loss)(point, phi, batch)
        scale, slope = 1.0, 0.0
        if constant_scale:  # PPO's joint clip: a factor the outer step keeps constant
            scale = 0.3 + 0.1 * i
            batch["clip_scale"] = torch.tensor(scale)
        elif clip is not None:
            norm = global_norm(list(h.values()))
            scale = float(clip_factor(norm, clip))
            slope = clip_factor_slope(float(norm), clip)
        trace.record(point, batch, h, scale, slope)
        point, st = rule.step(point, {k: scale * g for k, g in h.items()}, lr, st)
    trace.final = point
    assert any(s < 1 for s in trace.scales) or clip is None

    def scaled_loss(theta, phi, batch):
        loss = learned_loss(theta, phi, batch)
        return loss * batch["clip_scale"] if "clip_scale" in batch else loss

    expected, value = meta_gradient(scaled_loss, task_loss, theta, phi, batches, query, lr, first_order=True,
                                    max_grad_norm=None if constant_scale else clip, optimizer=rule,
                                    optimizer_state=state)
    ours, ours_value = traced_meta_gradient(learned_loss, task_loss, trace, phi, query)
    assert torch.allclose(ours_value, value, rtol=1e-5)
    assert _rel(ours, expected) < 1e-4
    assert max(float(g.abs().max()) for g in expected.values()) > 1e-6  # not vacuous
    # the trace is valid at its phi only, and survives a round trip through plain data
    assert trace.valid_for(phi) and not trace.valid_for({k: v + 1e-3 for k, v in phi.items()})
    again = InnerTrace.from_dict(trace.to_dict())
    assert _rel(traced_meta_gradient(learned_loss, task_loss, again, phi, query)[0], ours) < 1e-7
    # chunks of the vmap sum to the same gradient
    assert _rel(traced_meta_gradient(learned_loss, task_loss, trace, phi, query, chunk=4)[0], ours) < 1e-6


def _ml3(ppo_family: bool):
    env = make_vec_env("PointmassGoal-v0", n_envs=2, seed=0, env_kwargs={"task_split": "train"})
    kwargs = dict(meta_train=True, seed=0, n_steps=64, batch_size=32, n_epochs=3, policy_kwargs={"net_arch": [16, 16]})
    if ppo_family:
        env = VecNormalize(env)
        kwargs.update(inner_optimizer="adam", learning_rate=3e-4, vf_coef=0.5, max_grad_norm=0.5,
                      meta_inputs=("obs", "action", "mean", "std", "goal", "advantage", "old_log_prob"),
                      meta_loss_kwargs={"surrogate": "ppo", "correction": "penalty", "hidden_sizes": [8, 8]},
                      normalize_advantage="minibatch")
    else:
        kwargs.update(learning_rate=3e-2, max_grad_norm=0.2, meta_loss_kwargs={"hidden_sizes": [8, 8]})
    return ML3("MlpPolicy", env, **kwargs)


@pytest.mark.parametrize("ppo_family", [False, True])
def test_ml3_outer_gradient_traced_equals_recomputed(ppo_family, tmp_path):
    model = _ml3(ppo_family)
    model.learn(2 * 128)
    assert model._trace is not None and model.has_pending_outer_step
    if not ppo_family:
        assert any(s < 1 for s in model._trace.scales)  # the clip was active: its rank-one term is exercised
    model.collect_rollouts(model.env, model._setup_learn(128, None, False)[1], model.rollout_buffer, model.n_steps)
    data = model.prepare_rollout()
    traced, value = model.outer_gradient(data)
    model.traced_outer_step = False
    recomputed, value_again = model.outer_gradient(data)
    assert torch.allclose(value, value_again, rtol=1e-5)
    assert _rel(traced, recomputed) < 1e-5
    # a saved model keeps the trace, so a resumed run takes the same traced step
    model.traced_outer_step = True
    model.save(tmp_path / "m.zip")
    loaded = ML3.load(tmp_path / "m.zip", env=model.env, force_reset=False)
    assert loaded._trace is not None
    again, _ = loaded.outer_gradient(data)
    assert _rel(again, traced) < 1e-6


def test_a_changed_phi_falls_back_to_recomputing():
    model = _ml3(False)
    model.learn(2 * 128)
    phi = {k: v.detach() + 0.01 for k, v in model.meta_loss.named_parameters()}
    assert not model._trace.valid_for(phi)
    data = model.prepare_rollout()
    grads, _ = model.outer_gradient(data, phi)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_a_crafted_trace_in_a_model_file_is_refused_with_a_message(tmp_path):
    import io
    import zipfile

    from sb3_ml3.ml3.persistence import ModelFileError

    model = _ml3(False)
    model.learn(2 * 128)
    model.save(tmp_path / "m.zip")
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    state_name = "state.pt"  # the model file's non-module state: counters, last observations, the pending update
    state = torch.load(io.BytesIO(members[state_name]), weights_only=True)
    assert "trace" in state["pending"]
    del state["pending"]["trace"]["points"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members[state_name] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "crafted.zip", "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    with pytest.raises(ModelFileError, match="trace is malformed"):
        ML3.load(tmp_path / "crafted.zip", env=model.env)



@pytest.mark.parametrize("ppo_family", [False, True])
def test_later_outer_steps_on_a_rollout_rerun_the_update_and_match_the_recomputed_gradient(ppo_family, tmp_path):
    """meta_epochs > 1: after phi moves, the outer step reruns the pending update at the new phi (retrace) and
    takes its traced gradient; it equals the eager recomputation, and the live policy and optimizers are untouched."""
    model = _ml3(ppo_family)
    model.meta_epochs = 2
    model.task_clip_range = 0.2
    model.learn(2 * 128)
    model.collect_rollouts(model.env, model._setup_learn(128, None, False)[1], model.rollout_buffer, model.n_steps)
    data = model.prepare_rollout()
    with torch.no_grad():  # phi after a first outer step on this rollout
        for p in model.meta_loss.parameters():
            p.add_(0.05 * torch.randn_like(p))
    live = [p.detach().clone() for p in model.policy.parameters()]
    live_adam = {k: v["exp_avg"].clone() for k, v in enumerate(model.policy.optimizer.state.values())}
    phi = {k: v.detach().clone() for k, v in model.meta_loss.named_parameters()}
    assert not model._trace.valid_for(phi)
    retraced, value = model.outer_gradient(data)
    assert model._trace is not None and model._trace.valid_for(phi)  # rerun at the new phi
    assert all(torch.equal(a, b) for a, b in zip(live, model.policy.parameters()))
    assert all(torch.equal(live_adam[k], v["exp_avg"]) for k, v in enumerate(model.policy.optimizer.state.values()))
    model.traced_outer_step = False
    recomputed, value_again = model.outer_gradient(data)
    assert torch.allclose(value, value_again, rtol=1e-5)
    assert _rel(retraced, recomputed) < 1e-5
    assert max(float(g.abs().max()) for g in recomputed.values()) > 1e-8
    model.traced_outer_step = True
    model.save(tmp_path / "m.zip")  # the rerun's starting point is not saved: a loaded model recomputes instead
    loaded = ML3.load(tmp_path / "m.zip", env=model.env, force_reset=False)
    assert loaded.retrace() is None
