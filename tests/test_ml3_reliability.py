"""ML3 under bad input: NaN rewards and observations, Dict spaces."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_ml3 import ML3
from sb3_ml3.ml3.buffers import MAX_INVALID_IN_ROW, NonFiniteRewardError

ENV = "PointmassGoal-v0"
SMALL = dict(n_steps=16, batch_size=16, n_epochs=2, policy_kwargs={"net_arch": [8]}, meta_loss_kwargs={"hidden_sizes": (8,)})


class _BadReward(gym.Wrapper):
    """Returns a NaN (or inf) reward at the steps in ``bad`` (counted per env), or always with ``always``."""

    def __init__(self, env, bad=(3, 7, 20), always=False, value=float("nan")):
        super().__init__(env)
        self.bad, self.always, self.value, self.t = set(bad), always, value, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.always or self.t in self.bad:
            reward = self.value
        return obs, reward, terminated, truncated, info


class _BadObservation(gym.Wrapper):
    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return np.full_like(obs, np.nan), reward, terminated, truncated, info


def _vec(wrapper=None, n=2, **wrapper_kwargs):
    return make_vec_env(ENV, n_envs=n, seed=0, env_kwargs={"task_split": "train"},
                        wrapper_class=wrapper, wrapper_kwargs=wrapper_kwargs or None)


def _finite(model: ML3) -> bool:
    nets = [model.policy, model.meta_loss]
    return all(torch.isfinite(p).all() for net in nets for p in net.parameters())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_reward_is_skipped_counted_and_never_reaches_a_network(value):
    model = ML3("MlpPolicy", _vec(_BadReward, value=value), meta_train=True, seed=0, **SMALL)
    model.learn(16 * 2 * 4)
    assert _finite(model)
    assert model.rollout_buffer.n_invalid == 2 * 3  # three bad steps in each of the two envs
    assert model.logger.name_to_value["train/invalid_samples"] == 6
    assert np.isfinite(model.rollout_buffer.advantages).all() and np.isfinite(model.rollout_buffer.returns).all()
    assert model.n_meta_updates == 3 and model.skipped_meta_steps == 0  # the outer steps all happened
    with torch.no_grad():
        values = model.policy.predict_values(torch.zeros(1, model.observation_space.shape[0]))
    assert torch.isfinite(values).all()


def test_an_env_that_only_returns_nan_rewards_stops_training_with_a_clear_error():
    model = ML3("MlpPolicy", _vec(_BadReward, always=True), meta_train=True, seed=0, **SMALL)
    with pytest.raises(NonFiniteRewardError, match=f"PointmassGoal-v0 returned a NaN or inf reward in {MAX_INVALID_IN_ROW}"):
        model.learn(16 * 2 * 10)
    assert _finite(model)


def test_a_nan_observation_gets_an_error_that_names_the_env():
    model = ML3("MlpPolicy", _vec(_BadObservation), seed=0, **SMALL)
    with pytest.raises(ValueError, match="PointmassGoal-v0 returned a non-finite observation"):
        model.learn(64)
    assert _finite(model)


class _DictEnv(gym.Env):
    observation_space = spaces.Dict({"state": spaces.Box(-1, 1, (2,)), "goal": spaces.Box(-1, 1, (2,))})
    action_space = spaces.Box(-1, 1, (2,))

    def reset(self, seed=None, options=None):
        return {"state": np.zeros(2, np.float32), "goal": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return self.reset()[0], 0.0, False, False, {}


def test_a_dict_observation_space_gets_ml3s_own_message():
    with pytest.raises(ValueError, match="ML3 reads flat Box observations.*FlattenObservation"):
        ML3("MlpPolicy", _DictEnv())
    gym.register("DictObsForTest-v0", entry_point=_DictEnv)
    with pytest.raises(ValueError, match="ML3 reads flat Box observations"):
        ML3("MlpPolicy", "DictObsForTest-v0")


def test_a_loss_file_from_another_env_with_the_same_widths_warns(tmp_path):
    model = ML3("MlpPolicy", _vec(), seed=0, **SMALL)
    model.save_meta_loss(tmp_path / "loss.zip")
    with pytest.warns(UserWarning, match="meta-trained on PointmassGoal-v0 and is used on SameWidths-v0"):
        gym.register("SameWidths-v0", entry_point="sb3_ml3.envs.pointmass:PointmassGoalEnv", max_episode_steps=50)
        env = make_vec_env("SameWidths-v0", n_envs=2, seed=0, env_kwargs={"task_split": "train"})
        ML3("MlpPolicy", env, meta_loss=str(tmp_path / "loss.zip"), **SMALL)


def test_an_untrained_loss_at_meta_test_warns_loudly():
    from sb3_ml3.ml3.ml3 import UntrainedMetaLossWarning

    with pytest.warns(UntrainedMetaLossWarning, match="untrained"):
        ML3("MlpPolicy", _vec(), **SMALL)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedMetaLossWarning)
        ML3("MlpPolicy", _vec(), meta_train=True, **SMALL)  # meta-training it: no warning
        ML3("MlpPolicy", _vec(), inner_optimizer="adam", **dict(SMALL, meta_loss_kwargs={"surrogate": "ppo"}),
            meta_inputs=("obs", "action", "mean", "std", "goal", "advantage", "old_log_prob"))  # PPO's update
