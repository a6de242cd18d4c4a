"""The pure inner step rules of functional.py: equal to torch.optim, differentiable like higher's."""

import copy

import higher
import pytest
import torch
from torch import nn
from torch.func import functional_call

from sb3_ml3 import MetaLoss
from sb3_ml3.functional import SGD, Adam, inner_update, meta_gradient, parameters_of


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    meta_loss = MetaLoss("y_pred:2, y_target:2", hidden_sizes=(6,), activation="tanh", output="softplus").double()
    with torch.no_grad():
        for p in meta_loss.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batches = [(torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)) for _ in range(4)]
    query = (torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64))

    def learned(params, phi, batch):
        return functional_call(meta_loss, phi, (functional_call(model, params, (batch[0],)), batch[1])).mean()

    def task(params, q):
        return ((functional_call(model, params, (q[0],)) - q[1]) ** 2).mean()

    return model, meta_loss, learned, task, batches, query


@pytest.mark.parametrize("rule, torch_class", [(SGD(), torch.optim.SGD), (Adam(eps=1e-5), torch.optim.Adam)])
def test_pure_rules_equal_torch_optim_and_resume_from_its_state(rule, torch_class):
    model, meta_loss, learned, _, batches, _ = _problem()
    live = copy.deepcopy(model)
    optimizer = rule.torch_optimizer(list(live.parameters()), 0.01)  # the optimizer ML3's live steps use
    assert type(optimizer) is torch_class
    names = {p: n for n, p in live.named_parameters()}
    for batch in batches[:2]:  # two live steps, so Adam's state is not fresh
        optimizer.zero_grad()
        meta_loss(live(batch[0]), batch[1]).mean().backward()
        optimizer.step()
    state = rule.from_torch(optimizer, names)
    start = parameters_of(live)
    pure = inner_update(learned, start, parameters_of(meta_loss), batches[2:], 0.01, optimizer=rule,
                        optimizer_state=state)
    for batch in batches[2:]:
        optimizer.zero_grad()
        meta_loss(live(batch[0]), batch[1]).mean().backward()
        optimizer.step()
    for name, p in live.named_parameters():
        assert torch.allclose(pure[name], p.detach(), rtol=1e-10, atol=1e-12), name
        assert not torch.allclose(pure[name], start[name])  # the steps moved theta


def test_adam_meta_gradient_matches_higher():
    """higher's DifferentiableAdam adds eps before the bias correction (PyTorch's older formula): with a tiny
    eps the two formulas agree, so its meta-gradient is an oracle for ours."""
    model, meta_loss, learned, task, batches, query = _problem(seed=1)
    grads, value = meta_gradient(learned, task, parameters_of(model), parameters_of(meta_loss), batches, query,
                                 0.01, optimizer=Adam(eps=1e-14))
    oracle_model = copy.deepcopy(model)
    meta_loss.zero_grad()
    inner = torch.optim.Adam(oracle_model.parameters(), lr=0.01, eps=1e-14)
    with higher.innerloop_ctx(oracle_model, inner, copy_initial_weights=True) as (fmodel, diffopt):
        for batch in batches:
            diffopt.step(meta_loss(fmodel(batch[0]), batch[1]).mean())
        oracle_value = ((fmodel(query[0]) - query[1]) ** 2).mean()
        oracle_value.backward()
    assert torch.allclose(value, oracle_value.detach(), rtol=1e-8)
    for name, p in meta_loss.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-6, atol=1e-8), name
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_adam_meta_gradient_is_finite_where_a_gradient_is_zero():
    """A parameter the loss does not reach has v = 0: the sqrt's derivative must not turn that into NaN."""
    model, meta_loss, learned, task, batches, query = _problem(seed=2)
    params = parameters_of(model)
    params["unused"] = torch.zeros(3, dtype=torch.float64)
    grads, _ = meta_gradient(learned, task, params, parameters_of(meta_loss), batches, query, 0.01,
                             optimizer=Adam(), first_order=False)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("rule", [SGD(), Adam(eps=1e-5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lean_live_step_equals_torch_optimizer_step(rule, dtype):
    """``rule.apply_`` (the inner step's live step: torch's fused Adam kernel, one foreach SGD add) takes the steps
    of ``optimizer.step()`` and leaves the state ``torch.optim`` keeps, so either can continue the other."""
    torch.manual_seed(0)
    shapes = [(16, 5), (16,), (2, 16), (2,)]
    ours = [torch.randn(s, dtype=dtype) for s in shapes]
    reference = [p.clone() for p in ours]
    opt_ours, opt_ref = rule.torch_optimizer(ours, 3e-3), rule.torch_optimizer(reference, 3e-3)
    for step in range(60):
        grads = [torch.randn(s, dtype=dtype) * (1 + step % 5) for s in shapes]
        rule.apply_(opt_ours, ours, grads)
        for p, g in zip(reference, grads):
            p.grad = g.clone()
        opt_ref.step()
        if step == 30:  # the torch optimizer carries on from the lean steps' state, and back
            for p, g in zip(ours, grads):
                p.grad = g.clone()
            opt_ours.step()
            rule.apply_(opt_ref, reference, grads)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    if isinstance(rule, Adam):
        for p, q in zip(ours, reference):
            assert int(opt_ours.state[p]["step"]) == int(opt_ref.state[q]["step"]) == 61
            torch.testing.assert_close(opt_ours.state[p]["exp_avg_sq"], opt_ref.state[q]["exp_avg_sq"], rtol=tol, atol=tol)
