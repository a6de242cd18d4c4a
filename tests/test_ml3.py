"""The ML3 algorithm: meta-gradients, code-path equivalence, files, SB3 integration and bad input."""

import copy
import os

import gymnasium as gym
import higher
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

from sb3_ml3 import ML3, MetaLoss, MetaLossSpecError
from sb3_ml3.functional import inner_update, meta_gradient

ENV = "PointmassGoal-v0"
SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, policy_kwargs={"net_arch": [8]}, meta_loss_kwargs={"hidden_sizes": (8,)})


def _vec(n=2, seed=0, **kwargs):
    return make_vec_env(ENV, n_envs=n, seed=seed, env_kwargs={"task_split": "train", **kwargs})


def _collected(model: ML3):
    """A model whose rollout buffer holds one real rollout; returns its data and minibatches."""
    model._setup_learn(model.n_steps * model.n_envs, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, model.n_steps)
    data = model.rollout_tensors()
    return data, model._minibatches()


def _in_double(model: ML3, data, minibatches):
    """The model's policy, meta-loss and Q_task (if any) and the rollout's tensors in float64, for tight gradient
    checks; returns (data, minibatches, params, phi) with theta and phi as detached copies."""
    for net in (model.policy, model.meta_loss, model.task_q_net):
        if net is not None:
            net.double()
    data = {k: v.double() for k, v in data.items()}
    minibatches = [{k: v.double() for k, v in b.items()} for b in minibatches]
    params = {k: v.detach().clone() for k, v in model.policy.actor_parameters().items()}
    phi = {k: v.detach().clone() for k, v in model.meta_loss.named_parameters()}
    return data, minibatches, params, phi


def _assert_matches_finite_differences(objective, phi, grads, n_directions=3, eps=1e-6):
    """The directional derivative of ``objective`` at ``phi`` along random directions equals grads . d."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(n_directions):
        d = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in phi.items()}
        numeric = (objective({k: phi[k] + eps * d[k] for k in phi}) - objective({k: phi[k] - eps * d[k] for k in phi})) / (2 * eps)
        analytic = sum((grads[k] * d[k]).sum() for k in phi)
        assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


def _assert_task_loss_meta_gradient(model, params, phi, batch, data, inner_lr=0.1):
    """The outer step on ``model.task_loss_fn``: non-zero, its value is L_T after one inner step, and it
    matches finite differences of that function of phi."""
    grads, value = meta_gradient(model.learned_loss, model.task_loss_fn, params, phi, [batch], data, inner_lr)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0

    def objective(meta_params):
        return model.task_loss_fn(inner_update(model.learned_loss, params, meta_params, [batch], inner_lr), data)

    torch.testing.assert_close(value, objective(phi))
    _assert_matches_finite_differences(objective, phi, grads)


def test_meta_gradient_through_policy_inner_step_matches_higher_and_finite_differences():
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, learning_rate=0.1, **SMALL)
    data, minibatches = _collected(model)
    model.meta_loss.double()
    with torch.no_grad():  # a meta-loss away from its initialisation, perturbed in float64
        for p in model.meta_loss.parameters():
            p.add_(0.1 * torch.randn_like(p))
    data, minibatches, params, phi = _in_double(model, data, minibatches)
    batch = minibatches[0]
    grads, value = meta_gradient(model.learned_loss, model.task_loss_fn, params, phi, [batch], data, 0.1)

    # oracle 1: higher differentiating through one SGD step of the actor on the meta-loss
    view = copy.deepcopy(model.policy._actor_view)
    model.meta_loss.zero_grad()
    with higher.innerloop_ctx(view, torch.optim.SGD(view.parameters(), lr=0.1), copy_initial_weights=True) as (fview, diffopt):
        mean, std = fview(batch["observations"])
        diffopt.step(model.meta_loss(model.inputs.fields(batch, mean, std)).mean())
        mean, std = fview(data["observations"])
        log_prob = torch.distributions.Normal(mean, std).log_prob(data["actions"]).sum(-1)
        task_loss = -(data["task_weights"] * log_prob).mean()
        task_loss.backward()
    assert torch.allclose(value, task_loss, rtol=1e-10)
    for name, p in model.meta_loss.named_parameters():
        oracle = torch.zeros_like(p) if p.grad is None else p.grad  # the output bias cannot move theta
        assert torch.allclose(grads[name], oracle, rtol=1e-7, atol=1e-12), name
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0

    # oracle 2: central finite differences along random directions
    def objective(meta_params):
        updated = inner_update(model.learned_loss, params, meta_params, [batch], 0.1)
        return model.task_loss_fn(updated, data)

    _assert_matches_finite_differences(objective, phi, grads)


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_meta_train_and_meta_test_paths_make_the_same_inner_update(max_grad_norm):
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=1, learning_rate=0.05, max_grad_norm=max_grad_norm,
                **{**SMALL, "batch_size": 8})
    data, minibatches = _collected(model)
    params = {k: v.detach().clone() for k, v in model.policy.actor_parameters().items()}
    phi = {k: v.detach() for k, v in model.meta_loss.named_parameters()}
    functional = inner_update(model.learned_loss, params, phi, minibatches, 0.05, max_grad_norm=max_grad_norm)
    model.inner_step(minibatches)  # the in-place path that meta-test uses
    live = model.policy.actor_parameters()
    assert len(minibatches) == 4
    for name in params:
        assert torch.allclose(functional[name], live[name], rtol=1e-5, atol=1e-7), name
    assert all(not torch.equal(params[name], live[name]) for name in params)


def test_rollout_inputs_are_constants():
    """Actions and observations enter the meta-loss as data: only mean and std carry theta's graph."""
    model = ML3("MlpPolicy", _vec(), seed=0, **SMALL)
    _, minibatches = _collected(model)
    batch = minibatches[0]
    assert not any(v.requires_grad for v in batch.values())
    mean, std = model.policy.actor_mean_std(None, batch["observations"])
    fields = model.inputs.fields(batch, mean, std)
    assert [k for k, v in fields.items() if v.requires_grad] == ["mean", "std"]
    assert fields["goal"].shape[-1] == 2 and fields["obs"].shape[-1] == 4


def test_save_load_identical_actions_and_resumed_meta_training(tmp_path):
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, **SMALL)
    model.learn(3 * 16 * 2)
    assert model.n_meta_updates >= 1
    path = tmp_path / "ml3.zip"
    model.save(path)
    loaded = ML3.load(path, env=_vec())
    obs = np.stack([gym.make(ENV).observation_space.sample() for _ in range(5)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    for_inference = ML3.load(path)  # no env: to act, as SB3 models load
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], for_inference.predict(obs, deterministic=True)[0])
    for (name, a), b in zip(model.meta_loss.state_dict().items(), loaded.meta_loss.state_dict().values()):
        assert torch.equal(a, b), name
    state_a, state_b = model.meta_optimizer.state_dict(), loaded.meta_optimizer.state_dict()
    assert state_a["state"].keys() == state_b["state"].keys()
    for key in state_a["state"]:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(state_a["state"][key][field]), torch.as_tensor(state_b["state"][key][field]))
    assert loaded.meta_train and loaded.meta_loss.spec == model.meta_loss.spec
    before = {k: v.clone() for k, v in loaded.meta_loss.state_dict().items()}
    loaded.learn(3 * 16 * 2, reset_num_timesteps=False)
    assert loaded.n_meta_updates > model.n_meta_updates
    assert any(not torch.equal(before[k], v) for k, v in loaded.meta_loss.state_dict().items())


def test_meta_loss_file_trains_a_new_architecture_and_refuses_other_dimensions(tmp_path):
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, **SMALL)
    model.learn(64)
    path = tmp_path / "loss.zip"
    model.save_meta_loss(path)
    other = ML3("MlpPolicy", _vec(task_split="test"), meta_loss=str(path), policy_kwargs={"net_arch": [32, 32, 32]},
                n_steps=16, batch_size=32)
    assert not other.meta_train and not any(p.requires_grad for p in other.meta_loss.parameters())
    frozen = {k: v.clone() for k, v in other.meta_loss.state_dict().items()}
    other.learn(64)
    assert all(torch.equal(frozen[k], v) for k, v in other.meta_loss.state_dict().items())
    with pytest.raises(MetaLossSpecError, match="obs:4, action:2, mean:2, std:2, goal:2.*obs:4, action:2, mean:2, std:2, goal:2, reward:1"):
        ML3("MlpPolicy", _vec(), meta_loss=str(path), meta_inputs=("obs", "action", "mean", "std", "goal", "reward"))
    reacher_like = make_vec_env("MountainCarGoal-v0", n_envs=1)
    with pytest.raises(MetaLossSpecError, match="obs:4.*obs:2"):
        ML3("MlpPolicy", reacher_like, meta_loss=str(path), batch_size=16)


def test_integrates_with_subproc_vecnormalize_and_callbacks(tmp_path):
    # "sb3_ml3:<id>" makes each worker process import sb3_ml3 (and so register the envs) first
    env = VecNormalize(make_vec_env("sb3_ml3:" + ENV, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                                    env_kwargs={"task_split": "train"}))
    model = ML3("MlpPolicy", env, meta_train=True, seed=0, tensorboard_log=str(tmp_path / "tb"), **SMALL)
    eval_env = VecNormalize(_vec(1, task_split="test"), training=False)
    callbacks = [EvalCallback(eval_env, eval_freq=32, n_eval_episodes=1, log_path=str(tmp_path / "eval")),
                 CheckpointCallback(save_freq=32, save_path=str(tmp_path / "ckpt"))]
    model.learn(4 * 32, callback=callbacks)
    assert (tmp_path / "eval" / "evaluations.npz").exists()
    assert any(name.endswith(".zip") for name in os.listdir(tmp_path / "ckpt"))
    # the loss remembers the normalisation it saw, and a meta-test env takes it over
    model.save_meta_loss(tmp_path / "loss.zip")
    saved = MetaLoss.load(tmp_path / "loss.zip").metadata["obs_normalization"]
    np.testing.assert_allclose(saved["mean"], env.obs_rms.mean)
    test_env = VecNormalize(_vec(2, task_split="test"))
    ML3("MlpPolicy", test_env, meta_loss=str(tmp_path / "loss.zip"), **{k: SMALL[k] for k in ("n_steps", "batch_size")})
    np.testing.assert_allclose(test_env.obs_rms.mean, env.obs_rms.mean)
    with pytest.raises(MetaLossSpecError, match="VecNormalize"):
        ML3("MlpPolicy", _vec(), meta_loss=str(tmp_path / "loss.zip"))
    env.close()
    # tensorboard received the train/ keys
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = os.path.join(tmp_path / "tb", os.listdir(tmp_path / "tb")[0])
    tags = set(EventAccumulator(run).Reload().Tags()["scalars"])
    for key in ("train/meta_loss", "train/task_loss", "train/meta_grad_norm", "train/inner_grad_norm", "train/approx_kl"):
        assert key in tags, (key, sorted(tags))


def test_non_finite_task_loss_is_skipped_counted_and_never_written():
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, **SMALL)
    original = model.objective.loss
    model.objective.loss = lambda params, data: original(params, data) * float("nan")
    before = {k: v.clone() for k, v in model.meta_loss.state_dict().items()}
    model.learn(4 * 32)
    assert model.skipped_meta_steps >= 2 and model.n_meta_updates == 0
    assert all(torch.equal(before[k], v) for k, v in model.meta_loss.state_dict().items())
    assert model.logger.name_to_value["train/skipped_meta_steps"] == model.skipped_meta_steps


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MultiDiscreteStub"])
def test_discrete_action_spaces_are_refused(env_id):
    if env_id == "MultiDiscreteStub":
        class Stub(gym.Env):
            observation_space = gym.spaces.Box(-1, 1, (3,))
            action_space = gym.spaces.MultiDiscrete([2, 3])
        env = Stub()
    else:
        env = env_id
    with pytest.raises(ValueError, match="continuous Box action space"):
        ML3("MlpPolicy", env)


def test_goal_input_needs_a_goal_env():
    with pytest.raises(ValueError, match="goal_slice"):
        ML3("MlpPolicy", "Pendulum-v1")
    model = ML3("MlpPolicy", "Pendulum-v1", meta_inputs=("obs", "action", "mean", "std"), n_steps=32, batch_size=32)
    assert str(model.meta_loss.spec) == "obs:3, action:1, mean:1, std:1"
    model.learn(64)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        ML3("MlpPolicy", _vec(), meta_inputs=("obs", "action", "mean", "std", "goal", "logprob"))
    with pytest.raises(ValueError, match="task_loss"):
        ML3("MlpPolicy", _vec(), task_loss="ppo")
    with pytest.raises(ValueError, match="exceeds"):
        ML3("MlpPolicy", _vec(), n_steps=8, batch_size=64)


def test_max_policy_updates_freezes_the_policy_at_meta_test(tmp_path):
    path = tmp_path / "loss.zip"
    ML3("MlpPolicy", _vec(), **SMALL).save_meta_loss(path)
    model = ML3("MlpPolicy", _vec(), meta_loss=str(path), max_policy_updates=2,
                **{k: SMALL[k] for k in ("n_steps", "batch_size")})
    model.learn(2 * 32)
    after_two = {k: v.clone() for k, v in model.policy.actor_parameters().items()}
    model.learn(3 * 32, reset_num_timesteps=False)
    assert model.n_policy_updates == 2 and model.num_timesteps == 5 * 32
    assert all(torch.equal(after_two[k], v) for k, v in model.policy.actor_parameters().items())
    assert model.logger.name_to_value["train/policy_frozen"] == 1


def test_task_reward_weights_are_centred_rewards_to_go_of_the_info_key():
    """task_reward: the task loss weighs by the discounted rewards-to-go of an info value, per env."""
    model = ML3("MlpPolicy", _vec(n=3), meta_train=True, seed=0, task_reward="distance", gamma=0.9,
                normalize_advantage=False, **dict(SMALL, n_steps=60, batch_size=60))
    data, _ = _collected(model)
    rewards = model.rollout_buffer.grid("task_rewards")  # (n_steps, n_envs): the distances the envs reported
    assert rewards.shape == (60, 3) and np.all(rewards > 0)
    starts = model.rollout_buffer.grid("episode_starts")
    expected = np.zeros_like(rewards)
    for e in range(3):  # by hand: sum_j gamma^j r_{k+j}, stopping where the next episode starts
        for k in range(60):
            total, j = 0.0, 0
            while k + j < 60 and (j == 0 or not starts[k + j, e]):
                total += 0.9 ** j * rewards[k + j, e]
                j += 1
            expected[k, e] = total
    expected -= expected.mean(axis=1, keepdims=True)
    weights, targets = model._task_reward_weights()
    weights = weights.numpy().reshape(3, 60).T  # flat tensors are env-major
    assert targets is None  # no task critic to train
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-5)
    assert starts[1:].any(), "the rollout should cross an episode boundary (Pointmass episodes: 50 steps)"
    # the advantage meta-input keeps the env reward's weights; only the task loss reads task_reward
    model.train()
    assert model.task_loss_fn(None, dict(data, task_loss_weights=torch.zeros(180))).item() == 0.0

    bad = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, task_reward="no_such_key", **SMALL)
    with pytest.raises(KeyError, match="no_such_key.*info"):
        bad.learn(64)
    with pytest.raises(ValueError, match="task_reward"):
        ML3("MlpPolicy", _vec(), task_reward="", **SMALL)
    frozen = ML3("MlpPolicy", _vec(), meta_train=False, seed=0, task_reward="no_such_key", **SMALL)
    frozen.learn(64)  # meta-test never reads it


def test_task_critic_weighs_the_task_loss_by_gae_of_the_info_key(tmp_path):
    """task_critic: GAE advantages of the task reward under its own critic, which train() then fits."""
    model = ML3("MlpPolicy", _vec(n=3), meta_train=True, seed=0, task_reward="distance", task_critic=True,
                gamma=0.9, gae_lambda=0.8, normalize_advantage=False, **dict(SMALL, n_steps=60, batch_size=60))
    _collected(model)
    rewards = model.rollout_buffer.grid("task_rewards")
    starts = model.rollout_buffer.grid("episode_starts")
    with torch.no_grad():
        values = model.task_value_net(torch.as_tensor(model.rollout_buffer.grid("observations"))).squeeze(-1).numpy()
        last = model.task_value_net(torch.as_tensor(model._last_obs)).squeeze(-1).numpy()
    expected = np.zeros((60, 3))
    for e in range(3):  # by hand: A_k = sum_j (gamma lambda)^j delta_{k+j} within the episode
        for k in range(60):
            total, j = 0.0, 0
            while k + j < 60:
                end = starts[k + j + 1, e] if k + j + 1 < 60 else model._last_episode_starts[e]
                v_next = 0.0 if end else (values[k + j + 1, e] if k + j + 1 < 60 else last[e])
                total += (0.9 * 0.8) ** j * (rewards[k + j, e] + 0.9 * v_next - values[k + j, e])
                if end:
                    break
                j += 1
            expected[k, e] = total
    assert starts[1:].any()
    weights, targets = model._task_reward_weights()
    np.testing.assert_allclose(weights.numpy().reshape(3, 60).T, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(targets.numpy().reshape(3, 60).T, expected + values, rtol=1e-4, atol=1e-4)

    before = {k: v.clone() for k, v in model.task_value_net.state_dict().items()}
    model.train()
    assert np.isfinite(model.logger.name_to_value["train/task_value_loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.task_value_net.state_dict().items())
    model.save(tmp_path / "model.zip")
    loaded = ML3.load(tmp_path / "model.zip", env=_vec(n=3))
    for k, v in model.task_value_net.state_dict().items():
        assert torch.equal(loaded.task_value_net.state_dict()[k], v)
    with pytest.raises(ValueError, match="task_critic.*task_reward"):
        ML3("MlpPolicy", _vec(), task_critic=True, **SMALL)


def test_q_value_task_loss_differentiates_through_the_action_value_and_fits_it(tmp_path):
    """task_objective='q_value': L_T = -mean Q_task(s, clip(mu_theta(s))), its meta-gradient matches finite
    differences, train() fits Q_task to the task critic's lambda-returns, and save/load keeps Q_task."""
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, learning_rate=0.1, task_reward="distance",
                task_critic=True, task_objective="q_value", task_critic_epochs=3, **SMALL)
    data, minibatches = _collected(model)
    data, minibatches, params, phi = _in_double(model, data, minibatches)
    batch = minibatches[0]

    # by hand: the action-value of the clipped mean action, Q_task's own weights
    mean, _ = model.policy.actor_mean_std(params, data["observations"])
    clipped = mean.clamp(float(model.action_space.low[0]), float(model.action_space.high[0]))
    by_hand = -model.task_q_net(torch.cat([data["observations"], clipped], dim=-1)).mean()
    torch.testing.assert_close(model.task_loss_fn(params, data), by_hand)

    _assert_task_loss_meta_gradient(model, params, phi, batch, data)

    # Q_task regresses on the task critic's lambda-returns of the rollout's actions: its error falls
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, task_reward="distance", task_critic=True,
                task_objective="q_value", task_critic_epochs=20, **SMALL)
    _collected(model)
    data = model.rollout_tensors()
    _, targets = model._task_reward_weights()

    def q_error() -> float:
        with torch.no_grad():
            return float(torch.mean((model.objective.q_value(data["observations"], data["actions"]) - targets) ** 2))

    before = q_error()
    model.train()
    assert q_error() < 0.5 * before
    assert np.isfinite(model.logger.name_to_value["train/task_q_loss"])
    model.learn(3 * 32, reset_num_timesteps=False)  # outer steps on the Q-value task loss
    assert model.n_meta_updates > 0
    model.save(tmp_path / "model.zip")
    loaded = ML3.load(tmp_path / "model.zip", env=_vec())
    for k, v in model.task_q_net.state_dict().items():
        assert torch.equal(loaded.task_q_net.state_dict()[k], v)
    with pytest.raises(ValueError, match="task_critic=True"):
        ML3("MlpPolicy", _vec(), task_reward="distance", task_objective="q_value", **SMALL)
    with pytest.raises(ValueError, match="task_objective must be one of"):
        ML3("MlpPolicy", _vec(), task_objective="ddpg", **SMALL)


def test_imitation_task_loss_shapes_a_loss_that_trains_policies_towards_the_expert(tmp_path):
    """task_objective='imitation' (the paper's behavioural-cloning task loss): L_T matches a hand computation,
    its meta-gradient matches finite differences, and meta-training makes the learned loss train fresh
    policies towards the expert's actions; the expert is saved as its path and needed to meta-train on."""
    from stable_baselines3 import PPO
    expert = PPO("MlpPolicy", _vec(), seed=3, policy_kwargs={"net_arch": [16]})
    with torch.no_grad():  # a decisive expert: actions well inside the bounds, far from a fresh policy's ~0
        expert.policy.action_net.weight.mul_(30.0)
    expert.save(tmp_path / "expert.zip")
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, learning_rate=0.1, task_objective="imitation",
                expert=tmp_path / "expert.zip", **SMALL)
    data, minibatches = _collected(model)
    data["expert_actions"] = model.expert_actions(data["observations"])
    with torch.no_grad():
        by_hand = torch.as_tensor(expert.predict(data["observations"].numpy(), deterministic=True)[0])
        mean, _ = model.policy.actor_mean_std(None, data["observations"])
    torch.testing.assert_close(data["expert_actions"], by_hand)
    torch.testing.assert_close(model.task_loss_fn(None, data),
                               ((mean.clamp(-1, 1) - by_hand) ** 2).sum(-1).mean())

    data, minibatches, params, phi = _in_double(model, data, minibatches)
    batch = minibatches[0]
    _assert_task_loss_meta_gradient(model, params, phi, batch, data)

    def imitation_error_after_meta_test(meta_loss) -> float:
        """A fresh policy trained 10 updates by the frozen loss: its squared distance to the expert's actions."""
        student = ML3("MlpPolicy", _vec(seed=1), meta_loss=meta_loss, seed=1, **dict(SMALL, n_steps=32))
        student.learn(10 * 64)
        obs = torch.as_tensor(student.rollout_buffer.observations.reshape(-1, student.observation_space.shape[0]))
        with torch.no_grad():
            mean, _ = student.policy.actor_mean_std(None, obs)
        return float(((mean.clamp(-1, 1) - model.expert_actions(obs)) ** 2).sum(-1).mean())

    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, task_objective="imitation", meta_lr=3e-2,
                expert=tmp_path / "expert.zip", **dict(SMALL, n_steps=32))
    untrained = copy.deepcopy(model.meta_loss)
    model.learn(200 * 64)
    before, after = imitation_error_after_meta_test(untrained), imitation_error_after_meta_test(model.meta_loss)
    assert after < 0.3 * before, (before, after)  # measured: 0.30 -> 0.04

    model.save(tmp_path / "model.zip")  # the expert travels as its path
    assert ML3.load(tmp_path / "model.zip", env=_vec()).objective.expert is not None
    with_object = ML3("MlpPolicy", _vec(), meta_train=True, task_objective="imitation", expert=expert, **SMALL)
    with_object.save(tmp_path / "object.zip")  # an expert object is not pickled into the file
    with pytest.raises(ValueError, match="expert=expert"):
        ML3.load(tmp_path / "object.zip", env=_vec()).learn(64)
    ML3.load(tmp_path / "object.zip", env=_vec(), expert=expert).learn(64)
    with pytest.raises(ValueError, match="go together"):
        ML3("MlpPolicy", _vec(), task_objective="imitation", **SMALL)
    with pytest.raises(ValueError, match="do not match"):
        ML3("MlpPolicy", _vec(), meta_train=True, task_objective="imitation",
            expert=PPO("MlpPolicy", "ReacherGoal-v0"), **SMALL)
    with pytest.raises(FileNotFoundError, match="no such file"):
        ML3("MlpPolicy", _vec(), meta_train=True, task_objective="imitation", expert=tmp_path / "none.zip", **SMALL)


def test_clipped_task_loss_has_reinforces_gradient_at_the_behaviour_policy_and_reuses_rollouts():
    """task_clip_range: PPO's surrogate equals REINFORCE's gradient where the rollout was collected;
    meta_epochs outer steps per rollout then each move phi."""
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, task_clip_range=0.2, **SMALL)
    data, _ = _collected(model)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.policy.actor_parameters().items()}
    mean, std = model.policy.actor_mean_std(params, data["observations"])
    from sb3_ml3.ml3.policies import gaussian_log_prob
    np.testing.assert_allclose(gaussian_log_prob(mean, std, data["actions"]).detach(), data["old_log_prob"],
                               rtol=1e-5, atol=1e-5)  # the buffer's log-probs are the collecting policy's
    clipped = torch.autograd.grad(model.task_loss_fn(params, data), list(params.values()))
    model.task_clip_range = None
    plain = torch.autograd.grad(model.task_loss_fn(params, data), list(params.values()))
    for a, b in zip(clipped, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # far from the behaviour policy every ratio is clipped on the side the weight pushes: no gradient
    model.task_clip_range = 0.2
    far = dict(data, old_log_prob=data["old_log_prob"] - 10.0 * torch.sign(data["task_weights"]))
    zero = torch.autograd.grad(model.task_loss_fn(params, far), list(params.values()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in zero)

    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, meta_epochs=3, task_clip_range=0.2, **SMALL)
    model.learn(3 * 32)  # three rollouts: two outer steps of three meta-epochs each
    assert model.n_meta_updates + model.skipped_meta_steps == 6 and model.n_meta_updates > 0
    with pytest.raises(ValueError, match="task_clip_range"):
        ML3("MlpPolicy", _vec(), meta_train=True, meta_epochs=2, **SMALL)


def test_a_loss_reading_the_advantage_refuses_another_task_loss(tmp_path):
    """The advantage input means what the meta-training task_loss computed: left open, the file's is used;
    a mismatch is refused."""
    inputs = ("obs", "action", "mean", "std", "goal", "advantage")
    trained = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, meta_inputs=inputs, task_loss="return", **SMALL)
    path = str(tmp_path / "loss.zip")
    trained.save_meta_loss(path)
    assert MetaLoss.load(path).metadata["task_loss"] == "return"
    with pytest.raises(MetaLossSpecError, match="task_loss='return'"):
        ML3("MlpPolicy", _vec(), meta_loss=path, meta_inputs=inputs, task_loss="advantage", **SMALL)
    assert ML3("MlpPolicy", _vec(), meta_loss=path, **SMALL).task_loss == "return"
    from sb3_ml3.experiments import build_model, make_train_env, settings_for  # compare feeds the recorded one

    model = build_model("ml3", make_train_env(ENV, 2, seed=0), 0, settings_for("ml3", ENV), [8], path)
    assert model.task_loss == "return"


def test_second_order_outer_step_through_several_minibatches_matches_finite_differences():
    """first_order=False: the outer step differentiates through every minibatch step of an update (with the
    inner step's clipping), exactly; first_order=True is a different (approximate) gradient there."""
    settings = dict(SMALL, n_epochs=2, meta_loss_kwargs={"hidden_sizes": (8,), "quadratic": ["mean"]})
    model = ML3("MlpPolicy", _vec(), meta_train=True, seed=0, learning_rate=0.1, first_order=False,
                max_grad_norm=0.5, **settings)
    data, minibatches = _collected(model)
    assert len(minibatches) == 2
    data, minibatches, params, phi = _in_double(model, data, minibatches)

    def gradient(first_order):
        return meta_gradient(model.learned_loss, model.task_loss_fn, params, phi, minibatches, data, 0.1,
                             first_order=first_order, max_grad_norm=model.max_grad_norm)

    def objective(meta_params):
        updated = inner_update(model.learned_loss, params, meta_params, minibatches, 0.1,
                               max_grad_norm=model.max_grad_norm)
        return model.task_loss_fn(updated, data)

    exact, value = gradient(False)
    torch.testing.assert_close(value, objective(phi))
    _assert_matches_finite_differences(objective, phi, exact)
    approx, _ = gradient(True)
    difference = sum(float((exact[k] - approx[k]).abs().sum()) for k in phi)
    assert difference > 1e-6 * sum(float(g.abs().sum()) for g in exact.values())
