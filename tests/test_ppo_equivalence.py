"""ML3 with a surrogate-family loss at zero correction and PPO's joint update is SB3's PPO, step for step.

The same rollout, the same initial policy and the same minibatch order go through one ``PPO.train()`` and
one ``ML3.train()``; every actor and critic parameter must agree afterwards. This pins down what
``vf_coef`` (critic in the same minibatch steps, one gradient clip) and ``normalize_advantage="minibatch"``
do, and shows that without them ML3's update differs from PPO's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

import sb3_ml3.envs  # noqa: F401  (registers the goal envs)
from sb3_ml3 import ML3

INPUTS = ["obs", "action", "mean", "std", "goal", "advantage", "old_log_prob"]
SETTINGS = dict(n_steps=64, batch_size=32, n_epochs=3, learning_rate=3e-4, gamma=0.99, gae_lambda=0.95,
                max_grad_norm=0.5)
BUFFER_FIELDS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


def _pair(**ml3_kwargs):
    env = make_vec_env("PointmassGoal-v0", n_envs=2, seed=0)
    ppo = PPO("MlpPolicy", env, seed=0, **SETTINGS)
    ml3 = ML3("MlpPolicy", env, meta_inputs=INPUTS, meta_loss_kwargs={"surrogate": "ppo", "hidden_sizes": (16,)},
              inner_optimizer="adam", seed=0, **SETTINGS, **ml3_kwargs)
    ml3.policy.load_state_dict(ppo.policy.state_dict())
    for model in (ppo, ml3):
        model.set_logger(configure(None, [""]))
    # one rollout, collected by ML3, copied into PPO's buffer
    _, callback = ml3._setup_learn(SETTINGS["n_steps"] * 2, None)
    ml3.collect_rollouts(ml3.env, callback, ml3.rollout_buffer, n_rollout_steps=ml3.n_steps)
    for name in BUFFER_FIELDS:
        setattr(ppo.rollout_buffer, name, getattr(ml3.rollout_buffer, name).copy())
    ppo.rollout_buffer.full, ppo.rollout_buffer.generator_ready = True, False
    ppo._current_progress_remaining = ml3._current_progress_remaining
    return ppo, ml3


def _train_both(ppo: PPO, ml3: ML3) -> tuple[dict, dict]:
    np.random.seed(123)  # both draw one permutation of the rollout per epoch
    ppo.train()
    np.random.seed(123)
    ml3.train()
    return dict(ppo.policy.named_parameters()), dict(ml3.policy.named_parameters())


def test_zero_correction_with_joint_update_is_sb3_ppo():
    ppo, ml3 = _pair(vf_coef=0.5, normalize_advantage="minibatch")
    assert all(float(p.abs().sum()) == 0 for p in ml3.meta_loss.net[-1].parameters())  # zero correction
    before = {k: v.detach().clone() for k, v in ppo.policy.named_parameters()}
    ppo_params, ml3_params = _train_both(ppo, ml3)
    for name, p in ppo_params.items():
        assert not torch.allclose(p, before[name]), f"{name} did not move"
        torch.testing.assert_close(ml3_params[name], p, rtol=1e-5, atol=1e-6, msg=f"{name} differs from PPO's")


def test_default_update_differs_from_ppo():
    """Without the joint critic and per-minibatch normalisation, ML3's actor takes other steps than PPO's."""
    ppo, ml3 = _pair(vf_learning_rate=3e-4)
    ppo_params, ml3_params = _train_both(ppo, ml3)
    actor = ml3.policy.actor_parameter_names()
    assert max(float((ml3_params[n] - ppo_params[n]).detach().abs().max()) for n in actor) > 1e-5


def test_joint_update_meta_gradient_uses_the_recorded_clip():
    """At meta-train the outer step recomputes the joint-clipped update: its first outer step runs and is finite,
    and each minibatch carries the clip factor of the live step."""
    env = make_vec_env("PointmassGoal-v0", n_envs=2, seed=0)
    ml3 = ML3("MlpPolicy", env, meta_inputs=INPUTS, meta_loss_kwargs={"surrogate": "ppo", "hidden_sizes": (16,)},
              inner_optimizer="adam", seed=0, meta_train=True, vf_coef=0.5, normalize_advantage="minibatch",
              task_clip_range=0.2, **SETTINGS)
    ml3.learn(3 * 2 * SETTINGS["n_steps"])
    assert ml3.n_meta_updates == 2 and ml3.skipped_meta_steps == 0
    _, minibatches, _, _ = ml3._pending
    scales = torch.stack([b["clip_scale"] for b in minibatches])
    assert bool(((scales > 0) & (scales <= 1)).all())


@pytest.mark.parametrize("bad", [dict(vf_coef=0.0), dict(vf_coef=-1.0), dict(normalize_advantage="epoch")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="vf_coef|normalize_advantage"):
        ML3("MlpPolicy", "PointmassGoal-v0", meta_inputs=INPUTS, meta_loss_kwargs={"surrogate": "ppo"}, **bad)
