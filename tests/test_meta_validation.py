"""MetaValidationCallback: which snapshots it validates, what it counts, that it keeps the best and
that it leaves meta-training itself untouched."""

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ml3 import ML3, MetaLoss
from sb3_ml3.experiments import meta_train_loss, settings_for
from sb3_ml3.ml3.callbacks import MetaValidationCallback

ENV = "PointmassGoal-v0"
EPISODE = 50  # PointmassGoal's TimeLimit
SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, policy_kwargs={"net_arch": [8]},
             meta_loss_kwargs={"hidden_sizes": (8,)}, policy_reset_interval=4)


def _model(seed=0):
    env = make_vec_env(ENV, n_envs=2, seed=seed, env_kwargs={"task_split": "train"})
    return ML3("MlpPolicy", env, meta_train=True, seed=seed, learning_rate=0.1, meta_lr=3e-2, **SMALL)


def _phi(model):
    return {k: v.detach().clone() for k, v in model.meta_loss.state_dict().items()}


def test_validation_schedule_counts_and_restores_the_best(tmp_path):
    model = _model()
    callback = MetaValidationCallback(ENV, eval_freq=64, eval_at_updates=(1, 2), n_goals=3, restore_best=True,
                                      best_meta_loss_path=tmp_path / "best.zip")
    model.learn(320, callback=callback)  # 10 iterations of 32 samples
    steps = [s for s, _ in callback.history]
    # between rollouts once 64 new samples have passed, plus the final loss
    assert steps == [64, 128, 192, 256, 320]
    per_validation = 2 * 16 * 2 + 2 * 3 * EPISODE  # meta-test rollouts + one episode per goal and measurement
    assert callback.validation_timesteps == per_validation * len(steps)
    metrics = [m for _, m in callback.history]
    assert all(np.isfinite(metrics)) and len(set(metrics)) > 1, "distinct snapshots should validate differently"
    assert callback.best_metric == max(metrics)
    assert callback.best_timesteps == steps[int(np.argmax(metrics))]
    for key, value in _phi(model).items():  # the model ends with the best snapshot
        assert torch.equal(value, callback.best_state[key])
    saved = MetaLoss.load(tmp_path / "best.zip")
    for key, value in saved.state_dict().items():
        assert torch.equal(value, callback.best_state[key])


def test_validation_does_not_disturb_meta_training():
    plain = _model()
    plain.learn(256)
    validated = _model()
    callback = MetaValidationCallback(ENV, eval_freq=64, eval_at_updates=(1, 2), n_goals=2, restore_best=False)
    validated.learn(256, callback=callback)
    assert len(callback.history) == 4
    for key, value in _phi(plain).items():
        assert torch.equal(value, _phi(validated)[key]), key


def test_validation_is_deterministic_for_a_given_meta_loss():
    model = _model()
    callback = MetaValidationCallback(ENV, eval_freq=10_000, eval_at_updates=(1, 2), n_goals=3)
    model.learn(64, callback=callback)
    callback._init_callback()  # a fresh validation env, as at the start of learn()
    first = callback.validate()
    second = callback.validate()
    assert first == second


def test_validation_sees_observations_normalised_as_in_meta_training():
    env = VecNormalize(make_vec_env(ENV, n_envs=2, seed=0, env_kwargs={"task_split": "train"}), norm_reward=False)
    model = ML3("MlpPolicy", env, meta_train=True, seed=0, learning_rate=0.1, **SMALL)
    callback = MetaValidationCallback(ENV, eval_freq=64, eval_at_updates=(1,), n_goals=2, restore_best=False)
    model.learn(128, callback=callback)
    assert len(callback.history) == 2 and all(np.isfinite(m) for _, m in callback.history)
    callback._init_callback()
    callback.validate()
    val_env = callback._val_env
    assert isinstance(val_env, VecNormalize) and not val_env.training
    np.testing.assert_allclose(val_env.obs_rms.mean, env.obs_rms.mean)
    np.testing.assert_allclose(val_env.obs_rms.var, env.obs_rms.var)


def test_validation_refuses_a_meta_test_model():
    env = make_vec_env(ENV, n_envs=2, seed=0, env_kwargs={"task_split": "train"})
    model = ML3("MlpPolicy", env, meta_train=False, seed=0, **SMALL)
    with pytest.raises(ValueError, match="meta_train=True"):
        model.learn(64, callback=MetaValidationCallback(ENV))
    with pytest.raises(ValueError, match="positive"):
        MetaValidationCallback(ENV, eval_freq=0)
    with pytest.raises(ValueError, match="increasing"):
        MetaValidationCallback(ENV, eval_at_updates=(5, 2))


def test_meta_train_loss_charges_validation_samples():
    settings = settings_for("ml3", ENV, {
        "n_envs": 2,
        "meta_train": {**{k: v for k, v in SMALL.items() if k != "policy_kwargs"}, "learning_rate": 0.1},
        "meta_train_net_arch": [8],
        "meta_validation": dict(eval_freq=64, eval_at_updates=(1,), n_goals=2),
    })
    loss, used = meta_train_loss(ENV, 0, 128, settings)
    info = loss.metadata["meta_validation"]
    assert [s for s, _ in info["history"]] == [64, 128]
    assert used == 128 + info["validation_timesteps"] == loss.metadata["meta_train_timesteps"]
    assert info["validation_timesteps"] == 2 * (1 * 16 * 2 + 2 * EPISODE)


def test_compare_reuses_one_meta_loss_per_seed(tmp_path):
    from sb3_ml3.experiments import run_compare

    for seed in (0, 1):
        meta_train_loss(ENV, seed, 100 * (seed + 1), settings_for("ml3", ENV, {"n_envs": 2}),
                        path=tmp_path / f"loss_seed{seed}.zip")
    pattern = str(tmp_path / "loss_seed{seed}.zip")
    results = run_compare(ENV, algos=["ml3"], meta_loss=pattern, seeds=[0, 1], quick=True, progress=False, verbose=0)
    per_seed = results["meta_train"]["per_seed"]
    assert per_seed["0"]["path"].endswith("loss_seed0.zip") and per_seed["1"]["path"].endswith("loss_seed1.zip")
    assert [per_seed[s]["samples"] for s in ("0", "1")] == [100, 200]  # each file's own meta-train steps
    assert results["meta_train"]["samples"] == 150
    with pytest.raises(ValueError, match="no file"):
        run_compare(ENV, algos=["ml3"], meta_loss=pattern, seeds=[0, 2], quick=True, progress=False, verbose=0)


def test_validate_at_start_makes_the_initial_loss_a_candidate():
    model = _model()
    start = _phi(model)
    callback = MetaValidationCallback(ENV, eval_freq=64, eval_at_updates=(1,), n_goals=2, validate_at_start=True)
    model.learn(128, callback=callback)
    assert [s for s, _ in callback.history] == [0, 64, 128]
    if callback.best_timesteps == 0:  # the initial loss won: it is what the model keeps
        assert all(torch.equal(v, start[k]) for k, v in model.meta_loss.state_dict().items())
    first = MetaValidationCallback(ENV, eval_freq=64, eval_at_updates=(1,), n_goals=2)
    _model().learn(128, callback=first)
    assert [s for s, _ in first.history] == [64, 128]


def test_validation_models_compile_when_meta_training_does(monkeypatch):
    """A compiled meta-training validates with compiled testers (their short learn calls stay eager otherwise)."""
    from sb3_ml3 import compiled

    made = []
    original = compiled.CompiledOrEager.__init__

    def record(self, fn, backend="inductor", dynamic=False):
        made.append(self)
        original(self, fn, lambda graph, inputs: graph.forward, dynamic)  # run the captured graph as is

    monkeypatch.setattr(compiled.CompiledOrEager, "__init__", record)
    env = make_vec_env(ENV, n_envs=2, seed=0, env_kwargs={"task_split": "train"})
    model = ML3("MlpPolicy", env, meta_train=True, seed=0, learning_rate=0.1, meta_lr=3e-2, compile_inner_step=True,
                **SMALL)
    model.learn(128, callback=MetaValidationCallback(ENV, eval_freq=64, eval_at_updates=(1,), n_goals=2))
    assert len(made) == 3  # the meta-training model's, and one per validation (at 64 and at 128 steps)
    assert all(w.compiled_calls > 0 and w.eager_calls == 0 for w in made)
    eager = _model()
    made.clear()
    eager.learn(128, callback=MetaValidationCallback(ENV, eval_freq=64, eval_at_updates=(1,), n_goals=2))
    assert made == []
