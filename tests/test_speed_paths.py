"""The fast default path: the compiled meta-step equals the eager one, falls back to eager, compiles once."""

import shutil

import pytest
import torch

from sb3_ml3 import compiled
from sb3_ml3.supervised import core
from sb3_ml3.supervised.core import init_params, learned_loss_fn, meta_step_fn, meta_train, task_loss_fn
from sb3_ml3.supervised.sine import SineConfig, make_meta_loss, make_optimizee, sine_task

HAS_COMPILER = compiled.compile_supported()[0] and any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++"))


class CountingBackend:
    """A ``torch.compile`` backend that runs the captured graph as is and counts how often it is asked to compile."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiles += 1
        return graph_module.forward


def failing_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
    raise RuntimeError("no C++ compiler on this platform (simulated)")


def small_problem(seed: int = 0):
    """A small sine optimizee and meta-loss (quick to compile) with one task."""
    config = SineConfig(hidden_sizes=(8,), meta_hidden_sizes=(8,), n_points=16)
    generator = torch.Generator().manual_seed(seed)
    model, meta_loss = make_optimizee(config.hidden_sizes), make_meta_loss(config, generator)
    task = sine_task(1.0, 3.14, config.n_points, config.input_range, generator)
    theta = init_params(model, generator)
    phi = {name: p.detach() for name, p in meta_loss.named_parameters()}
    return model, meta_loss, learned_loss_fn(model, meta_loss), task_loss_fn(model), theta, phi, task


@pytest.fixture(autouse=True)
def fresh_cache():
    compiled.clear_cache()
    yield
    compiled.clear_cache()


def assert_same_step(a, b, rtol=1e-5, atol=1e-7):
    (grads_a, value_a, updated_a), (grads_b, value_b, updated_b) = a, b
    assert torch.allclose(value_a, value_b, rtol=rtol, atol=atol)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=rtol, atol=atol), name
    for name in updated_a:
        assert torch.allclose(updated_a[name], updated_b[name], rtol=rtol, atol=atol), name


@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile with inductor needs Dynamo and a C++ compiler")
def test_inductor_compiled_meta_gradient_equals_eager():
    _, _, learned, task_loss, theta, phi, task = small_problem()
    eager = meta_step_fn(learned, task_loss, 0.01, 1, False, compile=False)
    fast = meta_step_fn(learned, task_loss, 0.01, 1, False, compile=True)
    batch, query = task.support, task.query
    reference = eager(theta, phi, batch, query)
    assert_same_step(fast(theta, phi, batch, query), reference)
    assert fast.is_compiled and fast.compiled_calls == 1, fast.fallback_reason
    assert any(g.abs().sum() > 0 for g in reference[0].values())  # a real meta-gradient, not zeros
    # new values through the same compiled code: still equal (the compile did not bake in the first inputs)
    phi2 = {k: v + 0.1 * torch.randn_like(v) for k, v in phi.items()}
    assert_same_step(fast(theta, phi2, batch, query), eager(theta, phi2, batch, query))
    assert fast.compiled_calls == 2


@pytest.mark.parametrize("first_order", [False, True])
def test_captured_graph_equals_eager_for_k_steps(first_order):
    _, _, learned, task_loss, theta, phi, task = small_problem(1)
    counting = CountingBackend()
    fast = compiled.CompiledOrEager(meta_step_fn(learned, task_loss, 0.05, 3, first_order, compile=False),
                                    backend=counting)
    eager = meta_step_fn(learned, task_loss, 0.05, 3, first_order, compile=False)
    assert_same_step(fast(theta, phi, task.support, task.query), eager(theta, phi, task.support, task.query))
    assert counting.compiles >= 1 and fast.is_compiled


def test_failing_compile_falls_back_silently_to_the_same_result(monkeypatch):
    _, meta_loss, learned, task_loss, theta, phi, task = small_problem(2)
    step = compiled.CompiledOrEager(meta_step_fn(learned, task_loss, 0.01, 1, False, compile=False),
                                    backend=failing_backend)
    eager = meta_step_fn(learned, task_loss, 0.01, 1, False, compile=False)
    assert_same_step(step(theta, phi, task.support, task.query), eager(theta, phi, task.support, task.query))
    assert not step.is_compiled and "no C++ compiler" in step.fallback_reason
    assert step(theta, phi, task.support, task.query)[1] == eager(theta, phi, task.support, task.query)[1]
    assert step.eager_calls == 2 and step.compiled_calls == 0

    # meta_train's default path with a failing compiler: the same meta-loss as the eager run
    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", failing_backend)
    results = {}
    for mode in (True, False):
        model, meta_loss, learned, task_loss, _, _, task = small_problem(3)
        out = meta_train(meta_loss, learned, task_loss, lambda g: init_params(model, g),
                         lambda _: (task.support, task.query), n_outer=6, inner_lr=0.01, meta_lr=0.01,
                         generator=torch.Generator().manual_seed(0), reset_every=3, compile=mode)
        results[mode] = (out.task_loss, [p.detach().clone() for p in meta_loss.parameters()])
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    assert all(torch.allclose(a, b) for a, b in zip(results[True][1], results[False][1]))


def test_platform_without_dynamo_runs_eagerly(monkeypatch):
    monkeypatch.setattr(compiled, "compile_supported", lambda: (False, "no Dynamo here (simulated)"))
    step = compiled.CompiledOrEager(lambda x: x * 2)
    assert not step.is_compiled and step.fallback_reason == "no Dynamo here (simulated)"
    assert torch.equal(step(torch.ones(3)), torch.full((3,), 2.0))


def test_errors_of_the_function_itself_are_raised_and_compiling_continues():
    _, _, learned, task_loss, theta, phi, task = small_problem(4)
    step = compiled.CompiledOrEager(meta_step_fn(learned, task_loss, 0.01, 1, False, compile=False),
                                    backend=CountingBackend())
    bad_query = (task.query[0][:, :0], task.query[1])  # an input with no features: the optimizee's matmul fails
    with pytest.raises(RuntimeError, match="shape|size|mat"):
        step(theta, phi, task.support, bad_query)
    assert step.is_compiled  # a bad input is the caller's error, not a reason to give up compiling
    step(theta, phi, task.support, task.query)
    assert step.compiled_calls == 1


def test_compile_is_paid_once_per_process(monkeypatch):
    counting = CountingBackend()
    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", counting)
    model, meta_loss, learned, task_loss, _, _, task = small_problem(5)

    def train(seed: int, n_outer: int = 4, **kwargs):
        return meta_train(meta_loss, learned, task_loss, lambda g: init_params(model, g),
                          lambda _: (task.support, task.query), n_outer=n_outer, inner_lr=0.01, meta_lr=0.01,
                          generator=torch.Generator().manual_seed(seed), **kwargs)

    train(0, compile=True)
    after_first = counting.compiles
    assert after_first >= 1
    train(1, compile=True)  # a second seed: the same compiled step, no new compile
    train(2, compile=True)
    assert counting.compiles == after_first
    step = meta_step_fn(learned, task_loss, 0.01, 1, False, compile=True)
    assert step is meta_step_fn(learned, task_loss, 0.01, 1, False, compile=True)
    assert step.compiled_calls == 12
    # other settings are another computation: compiled separately
    assert meta_step_fn(learned, task_loss, 0.02, 1, False, compile=True) is not step


def test_default_compiles_only_long_runs(monkeypatch):
    counting = CountingBackend()
    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", counting)
    model, meta_loss, learned, task_loss, _, _, task = small_problem(6)

    def train(n_outer: int):
        meta_train(meta_loss, learned, task_loss, lambda g: init_params(model, g),
                   lambda _: (task.support, task.query), n_outer=n_outer, inner_lr=0.01, meta_lr=0.01,
                   generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr(core, "AUTO_COMPILE_MIN_OUTER", 5)
    train(4)  # shorter than the threshold: eager, no compile to pay for
    assert counting.compiles == 0
    train(5)
    assert counting.compiles >= 1
    assert SineConfig().compile is None and SineConfig().n_outer >= 1000  # the paper's sine run compiles


def test_truncated_meta_gradient_is_the_last_steps_from_their_start():
    from sb3_ml3.functional import inner_update, meta_gradient

    _, _, learned, task_loss, theta, phi, task = small_problem(7)
    batch, query = task.support, task.query
    full = meta_gradient(learned, task_loss, theta, phi, batch, query, 0.05, steps=3)
    same = meta_gradient(learned, task_loss, theta, phi, batch, query, 0.05, steps=3, truncate=3)
    for name in full[0]:
        assert torch.allclose(full[0][name], same[0][name])
    # truncate=1: the meta-gradient of one step taken from theta_2, which counts as a constant
    theta_2 = {k: v.detach() for k, v in inner_update(learned, theta, phi, batch, 0.05, steps=2).items()}
    last = meta_gradient(learned, task_loss, theta_2, phi, batch, query, 0.05, steps=1)
    cut = meta_gradient(learned, task_loss, theta, phi, batch, query, 0.05, steps=3, truncate=1)
    assert torch.allclose(cut[1], full[1]) and torch.allclose(cut[1], last[1])  # same theta_3, same task loss
    for name in full[0]:
        assert torch.allclose(cut[0][name], last[0][name], rtol=1e-5, atol=1e-8)
    assert any(not torch.allclose(cut[0][n], full[0][n], rtol=1e-3) for n in full[0])  # it does drop terms
    with pytest.raises(ValueError, match="truncate"):
        meta_gradient(learned, task_loss, theta, phi, batch, query, 0.05, steps=3, truncate=0)


def test_memory_flat_first_order_equals_differentiating_the_first_order_unroll():
    from torch.func import grad_and_value

    from sb3_ml3.functional import inner_update, meta_gradient

    _, _, learned, task_loss, theta, phi, task = small_problem(8)
    minibatches = [(task.support[0] + 0.1 * k, task.support[1] * (1 + 0.1 * k)) for k in range(4)]
    for batch, steps in ((task.support, 4), (minibatches, None)):
        def unrolled(meta_params):
            updated = inner_update(learned, theta, meta_params, batch, 0.05, steps, first_order=True)
            return task_loss(updated, task.query), updated

        (expected, (value, updated)) = grad_and_value(unrolled, has_aux=True)(phi)
        grads, flat_value, flat_updated = meta_gradient(learned, task_loss, theta, phi, batch, task.query, 0.05,
                                                        steps, first_order=True, return_updated=True,
                                                        low_memory=True)
        assert torch.allclose(flat_value, value)
        for name in expected:
            assert torch.allclose(grads[name], expected[name], rtol=1e-4, atol=1e-8), name
        for name in updated:
            assert torch.allclose(flat_updated[name], updated[name])


def _ml3_ppo_family(**extra):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_ml3 import ML3

    env = VecNormalize(make_vec_env("PointmassGoal-v0", n_envs=2, seed=0, env_kwargs={"task_split": "train"}))
    return ML3("MlpPolicy", env, meta_train=True, seed=0, n_steps=64, batch_size=32, n_epochs=2,
               policy_kwargs={"net_arch": [16, 16]}, inner_optimizer="adam", learning_rate=3e-4, vf_coef=0.5,
               max_grad_norm=0.5, normalize_advantage="minibatch", policy_reset_interval=2,
               meta_inputs=("obs", "action", "mean", "std", "goal", "advantage", "old_log_prob"),
               meta_loss_kwargs={"surrogate": "ppo", "correction": "penalty", "hidden_sizes": [8, 8]}, **extra)


@pytest.mark.parametrize("backend", ["counting", "failing"])
def test_compiled_inner_step_trains_as_the_eager_one(backend, monkeypatch, tmp_path):
    """``ML3(compile_inner_step=True)`` meta-trains to the same policy and meta-loss as the eager inner step, across
    a policy reset and a second model without compiling again, and runs eagerly where compiling fails."""
    counting = CountingBackend()
    chosen = counting if backend == "counting" else failing_backend
    original = compiled.CompiledOrEager.__init__
    monkeypatch.setattr(compiled.CompiledOrEager, "__init__",
                        lambda self, fn, backend="inductor", dynamic=False: original(self, fn, chosen, dynamic))
    eager = _ml3_ppo_family()
    eager.learn(4 * 128)
    fast = _ml3_ppo_family(compile_inner_step=True)  # built after: the seed sets the global RNG the rollouts use
    fast.learn(4 * 128)  # 4 updates with outer steps between them, a policy reset after 2 updates
    wrapper = fast._compiled_minibatch_losses
    assert fast.n_meta_updates == eager.n_meta_updates >= 2
    for (name, a), b in zip(eager.policy.state_dict().items(), fast.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(eager.meta_loss.parameters(), fast.meta_loss.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if backend == "counting":
        assert wrapper.is_compiled and wrapper.eager_calls == 0 and wrapper.compiled_calls == fast.n_policy_updates * 2 * 4 > 0
        assert counting.compiles == 1  # one graph, kept across updates and the policy reset
    else:
        assert not wrapper.is_compiled and "simulated" in wrapper.fallback_reason
    # the setting is saved with the model
    fast.save(tmp_path / "m.zip")
    from sb3_ml3 import ML3

    assert ML3.load(tmp_path / "m.zip", env=fast.env).compile_inner_step is True


def test_auto_compiles_the_inner_step_for_long_learn_calls_only():
    """``compile_inner_step="auto"`` (the default) compiles for ``learn`` calls of COMPILE_FROM_STEPS or more."""
    from sb3_ml3.ml3.inner_step import COMPILE_FROM_STEPS

    model = _ml3_ppo_family()
    assert model.compile_inner_step == "auto"
    model._setup_learn(COMPILE_FROM_STEPS - 1)
    assert not model._compiling and model._minibatch_losses_function() == model.minibatch_losses
    model._setup_learn(COMPILE_FROM_STEPS)
    assert model._compiling and isinstance(model._minibatch_losses_function(), compiled.CompiledOrEager)
    never = _ml3_ppo_family(compile_inner_step=False)
    never._setup_learn(10 * COMPILE_FROM_STEPS)
    assert not never._compiling
    with pytest.raises(ValueError, match="compile_inner_step"):
        _ml3_ppo_family(compile_inner_step="yes")
