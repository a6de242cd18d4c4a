"""The inner/outer step on torch.func: meta-gradients against `higher` and finite differences."""

import copy

import higher
import pytest
import torch
from torch import nn
from torch.func import functional_call

from sb3_ml3 import MetaLoss
from sb3_ml3.functional import apply_meta_gradient, batched_meta_gradient, inner_update, meta_gradient, parameters_of

INNER_LR = 0.05


def _setup(activation: str = "tanh", seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    meta_loss = MetaLoss("y_pred:1, y_target:1", hidden_sizes=(6, 6), activation=activation, output="softplus",
                         bias=True).double()
    with torch.no_grad():  # non-zero biases so that every parameter matters
        for p in meta_loss.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    xq, yq = torch.randn(12, 2, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)

    def learned(params, phi, batch):
        xb, yb = batch
        return functional_call(meta_loss, phi, (functional_call(model, params, (xb,)), yb)).mean()

    def task(params, query):
        xb, yb = query
        return ((functional_call(model, params, (xb,)) - yb) ** 2).mean()

    return model, meta_loss, learned, task, (x, y), (xq, yq)


def _higher_meta_gradient(model, meta_loss, batch, query, steps):
    """The oracle: the paper's own tool, higher, differentiating through K SGD steps."""
    model = copy.deepcopy(model)
    meta_loss.zero_grad()
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=True) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(meta_loss(fmodel(batch[0]), batch[1]).mean())
        task_loss = ((fmodel(query[0]) - query[1]) ** 2).mean()
        task_loss.backward()
    return {name: p.grad.clone() for name, p in meta_loss.named_parameters()}, task_loss.detach()


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_higher(steps):
    model, meta_loss, learned, task, batch, query = _setup(activation="relu")
    grads, value = meta_gradient(learned, task, parameters_of(model), parameters_of(meta_loss), batch, query,
                                 INNER_LR, steps=steps)
    oracle, oracle_value = _higher_meta_gradient(model, meta_loss, batch, query, steps)
    assert torch.allclose(value, oracle_value, rtol=1e-12, atol=1e-14)
    for name in oracle:
        assert torch.allclose(grads[name], oracle[name], rtol=1e-9, atol=1e-12), name
    assert sum(g.abs().sum() for g in grads.values()) > 0  # the check is not vacuous


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_central_finite_differences(steps):
    model, meta_loss, learned, task, batch, query = _setup(activation="tanh", seed=1)
    params, phi = parameters_of(model), parameters_of(meta_loss)
    grads, _ = meta_gradient(learned, task, params, phi, batch, query, INNER_LR, steps=steps)

    def objective(meta_params):
        updated = inner_update(learned, params, meta_params, batch, INNER_LR, steps=steps)
        return task(updated, query)

    eps = 1e-6
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):  # random directions: <grad, v> against (f(phi + eps v) - f(phi - eps v)) / 2 eps
        direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in phi.items()}
        plus = objective({k: phi[k] + eps * direction[k] for k in phi})
        minus = objective({k: phi[k] - eps * direction[k] for k in phi})
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((grads[k] * direction[k]).sum() for k in phi)
        assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-10), (float(analytic), float(numeric))
    # and every coordinate of the last layer
    last = [k for k in phi if k.endswith("weight")][-1]
    for i in range(phi[last].numel()):
        bump = torch.zeros_like(phi[last]).view(-1)
        bump[i] = eps
        bump = bump.view_as(phi[last])
        numeric = (objective({**phi, last: phi[last] + bump}) - objective({**phi, last: phi[last] - bump})) / (2 * eps)
        assert torch.allclose(grads[last].view(-1)[i], numeric, rtol=1e-6, atol=1e-10)


def test_inner_update_is_plain_sgd_on_the_learned_loss():
    model, meta_loss, learned, _, batch, _ = _setup()
    params = parameters_of(model)
    updated = inner_update(learned, params, parameters_of(meta_loss), batch, INNER_LR)
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(reference.parameters(), lr=INNER_LR)
    opt.zero_grad()
    meta_loss(reference(batch[0]), batch[1]).mean().backward()
    opt.step()
    for name, p in reference.named_parameters():
        assert torch.allclose(updated[name], p, rtol=1e-12, atol=1e-14)


def test_inner_update_with_minibatch_list_equals_sequential_steps():
    model, meta_loss, learned, _, (x, y), _ = _setup()
    params, phi = parameters_of(model), parameters_of(meta_loss)
    minibatches = [(x[:8], y[:8]), (x[8:], y[8:])]
    together = inner_update(learned, params, phi, minibatches, INNER_LR)
    one = inner_update(learned, params, phi, minibatches[0], INNER_LR)
    two = inner_update(learned, one, phi, minibatches[1], INNER_LR)
    for name in params:
        assert torch.allclose(together[name], two[name])
    with pytest.raises(ValueError, match="minibatches"):
        inner_update(learned, params, phi, minibatches, INNER_LR, steps=3)


def test_first_order_is_exact_for_one_step_and_differs_for_three():
    model, meta_loss, learned, task, batch, query = _setup()
    params, phi = parameters_of(model), parameters_of(meta_loss)
    exact1, _ = meta_gradient(learned, task, params, phi, batch, query, INNER_LR, steps=1)
    first1, _ = meta_gradient(learned, task, params, phi, batch, query, INNER_LR, steps=1, first_order=True)
    exact3, _ = meta_gradient(learned, task, params, phi, batch, query, INNER_LR, steps=3)
    first3, _ = meta_gradient(learned, task, params, phi, batch, query, INNER_LR, steps=3, first_order=True)
    for k in phi:
        assert torch.allclose(exact1[k], first1[k], rtol=1e-12, atol=1e-15)
    diff = sum((exact3[k] - first3[k]).abs().sum() for k in phi)
    size = sum(exact3[k].abs().sum() for k in phi)
    assert 0 < diff < 0.5 * size  # an approximation: different, but close


def test_vmapped_tasks_equal_the_loop():
    model, meta_loss, learned, task, _, _ = _setup()
    n_tasks = 5
    torch.manual_seed(7)
    xs, ys = torch.randn(n_tasks, 16, 2, dtype=torch.float64), torch.randn(n_tasks, 16, 1, dtype=torch.float64)
    xq, yq = torch.randn(n_tasks, 10, 2, dtype=torch.float64), torch.randn(n_tasks, 10, 1, dtype=torch.float64)
    inits = []
    for _ in range(n_tasks):
        fresh = copy.deepcopy(model)
        for p in fresh.parameters():
            nn.init.normal_(p, std=0.5)
        inits.append(parameters_of(fresh))
    stacked = {k: torch.stack([p[k] for p in inits]) for k in inits[0]}
    phi = parameters_of(meta_loss)
    for steps in (1, 2):
        mean_grads, values = batched_meta_gradient(learned, task, stacked, phi, (xs, ys), (xq, yq), INNER_LR, steps=steps)
        loop = [meta_gradient(learned, task, inits[i], phi, (xs[i], ys[i]), (xq[i], yq[i]), INNER_LR, steps=steps)
                for i in range(n_tasks)]
        for k in phi:
            expected = torch.stack([g[k] for g, _ in loop]).mean(0)
            assert torch.allclose(mean_grads[k], expected, rtol=1e-10, atol=1e-13)
        assert torch.allclose(values, torch.stack([v for _, v in loop]), rtol=1e-12)
    # shared parameters for every task
    shared, _ = batched_meta_gradient(learned, task, inits[0], phi, (xs, ys), (xq, yq), INNER_LR, params_batched=False)
    loop = [meta_gradient(learned, task, inits[0], phi, (xs[i], ys[i]), (xq[i], yq[i]), INNER_LR)[0] for i in range(n_tasks)]
    for k in phi:
        assert torch.allclose(shared[k], torch.stack([g[k] for g in loop]).mean(0), rtol=1e-10, atol=1e-13)


def test_apply_meta_gradient_never_writes_non_finite_values():
    meta_loss = MetaLoss("a:1, b:1", hidden_sizes=(4,))
    opt = torch.optim.SGD(meta_loss.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in meta_loss.state_dict().items()}
    grads = {k: torch.ones_like(v) for k, v in meta_loss.named_parameters()}
    bad = dict(grads)
    bad[next(iter(bad))] = torch.full_like(grads[next(iter(grads))], float("nan"))
    r1 = apply_meta_gradient(opt, meta_loss, bad, 1.0)
    r2 = apply_meta_gradient(opt, meta_loss, grads, float("inf"))
    assert not r1.applied and "meta-gradient" in r1.reason
    assert not r2.applied and "task loss" in r2.reason
    assert all(torch.equal(before[k], v) for k, v in meta_loss.state_dict().items())
    r3 = apply_meta_gradient(opt, meta_loss, grads, 1.0, max_grad_norm=0.5)
    assert r3.applied and r3.grad_norm == pytest.approx(float(sum(g.numel() for g in grads.values())) ** 0.5)
    step = sum(((before[k] - v) ** 2).sum() for k, v in meta_loss.state_dict().items()) ** 0.5
    assert float(step) == pytest.approx(0.1 * 0.5, rel=1e-5)  # clipped to norm 0.5, times lr
