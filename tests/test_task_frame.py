"""The ``task_frame`` meta-input: the env's symmetry-reduced observation (ReacherGoal's arm frame), from raw observations."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_ml3.envs.reacher import ARM_FRAME_DIM, arm_frame_features
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ml3 import ML3

ENV = "ReacherGoal-v0"
INPUTS = ("obs", "action", "mean", "std", "goal", "advantage", "old_log_prob", "policy_age", "task_frame")
SMALL = {"n_steps": 16, "batch_size": 32, "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}, "meta_inputs": INPUTS,
         "meta_loss_kwargs": {"hidden_sizes": (8,), "surrogate": "ppo", "correction": "target",
                              "correction_fields": ("task_frame", "policy_age")}}


class RecordObservations(gym.Wrapper):
    """Keeps every observation the env returns (reset and step), raw, before any VecNormalize."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.seen: list[np.ndarray] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.seen.append(np.array(obs, dtype=np.float64))
        return obs, info

    def step(self, action):
        obs, *rest = self.env.step(action)
        self.seen.append(np.array(obs, dtype=np.float64))
        return (obs, *rest)


def _vec(n=2, normalize=True):
    env = make_vec_env(ENV, n_envs=n, seed=0, env_kwargs={"task_split": "train"}, wrapper_class=RecordObservations)
    return VecNormalize(env, gamma=0.99) if normalize else env


def _rotate(obs: np.ndarray, angle: float) -> np.ndarray:
    """ReacherGoal's observation with the arm and the goal rotated together by ``angle`` about the base."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    out = obs.copy()
    q1 = np.arctan2(obs[2], obs[0]) + angle
    out[0], out[2] = np.cos(q1), np.sin(q1)
    out[4:6] = rot @ obs[4:6]
    out[8:10] = rot @ obs[8:10]
    return out


def test_arm_frame_features_do_not_change_when_the_arm_and_goal_turn_together():
    obs = gym.make(ENV).reset(seed=3)[0].astype(np.float64)
    obs[6:8] = [0.7, -1.3]  # joint velocities are unchanged by a rotation of the whole task
    base = arm_frame_features(obs)
    assert base.shape == (ARM_FRAME_DIM,)
    for angle in (0.4, 2.0, -2.9):
        assert np.allclose(arm_frame_features(_rotate(obs, angle)), base, atol=1e-12)
    # the goal's radius is in them, its bearing is not: a farther goal changes them
    farther = obs.copy()
    farther[4:6] *= 1.5
    assert not np.allclose(arm_frame_features(farther), base)
    assert torch.allclose(arm_frame_features(torch.as_tensor(obs)), torch.as_tensor(base))
    with pytest.raises(ValueError, match="width 10"):
        arm_frame_features(np.zeros(6))


@pytest.mark.parametrize("normalize", [True, False])
def test_every_sample_carries_the_features_of_its_raw_observation(normalize):
    env = _vec(normalize=normalize)
    model = ML3("MlpPolicy", env, seed=0, meta_train=False, **SMALL)
    assert model.meta_loss.spec.names[-1] == "task_frame" and model.task_frame_dim == ARM_FRAME_DIM
    model.learn(2 * 16 * 2)  # two rollouts of 16 steps; ReacherGoal's episodes last 50, so no reset within them
    buffer = model.rollout_buffer
    frames = buffer.grid("task_frames")  # (16, 2, 7) of the second rollout
    for i, wrapper in enumerate(env.get_attr("seen")):
        raw = np.stack(wrapper[16:32])  # the observations the second rollout's steps acted on
        assert np.allclose(frames[:, i], arm_frame_features(raw), atol=1e-5)
    if normalize:  # the buffer's observations are normalised ones; the features are not computed from them
        assert not np.allclose(buffer.grid("observations")[:, 0, :4], np.stack(env.get_attr("seen")[0][16:32])[:, :4])
    batch = model._minibatches()[0]
    mean, std = model.policy.actor_mean_std(None, batch["observations"])
    fields = model.inputs.fields(batch, mean, std)
    assert fields["task_frame"].shape == (len(batch["observations"]), ARM_FRAME_DIM)
    if not normalize:  # each minibatch row carries the features of its own observation
        expected = arm_frame_features(batch["observations"].double()).float()
        assert torch.allclose(fields["task_frame"], expected, atol=1e-5)


def test_a_task_frame_loss_meta_trains_saves_and_loads_with_and_without_an_env(tmp_path):
    model = ML3("MlpPolicy", _vec(), seed=0, meta_train=True, policy_reset_interval=3, **SMALL)
    before = {k: v.clone() for k, v in model.meta_loss.state_dict().items()}
    model.learn(3 * 16 * 2)
    assert model.n_meta_updates >= 1
    assert any(not torch.equal(before[k], v) for k, v in model.meta_loss.state_dict().items())
    model.save(tmp_path / "m.zip")
    bare = ML3.load(tmp_path / "m.zip")  # no env: the width comes from the file
    assert bare.task_frame_dim == ARM_FRAME_DIM and bare.inputs.spec == model.inputs.spec
    obs = np.asarray(model._last_obs)
    assert np.array_equal(bare.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    again = ML3.load(tmp_path / "m.zip", env=_vec())
    again.learn(16 * 2)  # collecting again stages the features from the new env's raw observations
    assert np.isfinite(again.rollout_buffer.grid("task_frames")).all()
    env = _vec()
    bare.set_env(env)  # an env given after loading: learn() starts staging from it
    bare.learn(2 * 16 * 2)
    raw = np.stack(env.get_attr("seen")[0][16:32])
    assert np.allclose(bare.rollout_buffer.grid("task_frames")[:, 0], arm_frame_features(raw), atol=1e-5)


def test_an_env_without_task_frame_features_gets_a_message_that_says_what_to_do():
    pointmass = make_vec_env("PointmassGoal-v0", n_envs=2, seed=0)
    with pytest.raises(ValueError, match="task_frame_features.*Leave 'task_frame' out"):
        ML3("MlpPolicy", pointmass, seed=0, meta_train=False, **SMALL)
