"""Reference policies (the floor and the ceiling of METRICS.md) and the behaviour statistics."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import sb3_ml3  # noqa: F401  (registers the envs)
from sb3_ml3.envs import sample_tasks
from sb3_ml3.evaluation import evaluate_policy_on_goals, evaluate_task_metric, success_threshold_for
from sb3_ml3.experiments.references import (ConstantActionPolicy, ExpertPolicy, RandomActionPolicy, ZeroActionPolicy,
                                            action_space_for, best_constant_action, constant_action_candidates,
                                            evaluate_references, oracle_for)

torch.set_num_threads(1)
SEED = 12345
POINTMASS, REACHER = "PointmassGoal-v0", "ReacherGoal-v0"


def held_out(env_id: str) -> np.ndarray:
    return sample_tasks(env_id, 10, "test", seed=1000)


def test_zero_action_metric_on_pointmass_is_the_start_distance():
    goals = held_out(POINTMASS)
    result = evaluate_policy_on_goals(ZeroActionPolicy(action_space_for(POINTMASS)), POINTMASS, goals, seed=SEED)
    expected = []
    for i, goal in enumerate(goals):  # the zero action leaves the point mass at rest where it starts
        env = gym.make(POINTMASS, goal=goal)
        env.reset(seed=SEED + i)
        expected.append(-np.linalg.norm(env.unwrapped.state[:2] - goal))
        env.close()
    np.testing.assert_allclose(result.metric, expected, atol=1e-6)
    np.testing.assert_allclose(result.final_distance, -np.asarray(expected), atol=1e-6)
    assert result.steps.tolist() == [50] * 10 and not result.success.any()


def test_saturation_is_measured_on_the_clipped_action():
    goals = held_out(POINTMASS)[:3]

    def saturation(action):
        return evaluate_policy_on_goals(ConstantActionPolicy(action), POINTMASS, goals, seed=SEED).saturation

    np.testing.assert_array_equal(saturation((1.0, 1.0)), 1.0)
    np.testing.assert_array_equal(saturation((0.0, 0.0)), 0.0)
    np.testing.assert_array_equal(saturation((7.0, -3.0)), 1.0)  # the env receives (1, -1)
    np.testing.assert_array_equal(saturation((0.96, 0.5)), 0.5)


def test_success_thresholds_come_from_the_env_classes():
    assert success_threshold_for(REACHER) == success_threshold_for("ReacherGoal4D-v0") == 0.02
    assert success_threshold_for(POINTMASS) == 0.1
    assert success_threshold_for("MountainCarGoal-v0") == 0.05
    assert success_threshold_for("AntGoal-v0") == 0.5


@pytest.mark.parametrize("env_id", [REACHER, POINTMASS, "MountainCarGoal-v0"])
def test_oracles_beat_the_best_constant_action_and_succeed(env_id):
    goals = held_out(env_id)
    refs = evaluate_references(env_id, goals, seed=SEED)
    json.dumps(refs)  # goes verbatim into results.json
    assert set(refs) == {"zero_action", "random", "best_constant_action", "oracle"}
    oracle, constant, zero = refs["oracle"], refs["best_constant_action"], refs["zero_action"]
    assert constant["metric"] >= zero["metric"]  # the zero action is one of the candidates
    gap = abs(constant["metric"])  # a wide margin: the oracle closes most of the way to a perfect 0
    assert oracle["metric"] > constant["metric"] + 0.7 * gap
    assert oracle["success_rate"] >= 0.8 and oracle["final_distance"] < success_threshold_for(env_id)
    assert len(oracle["per_goal"]) == 10 and np.isclose(np.mean(oracle["per_goal"]), oracle["metric"])
    assert "oracle" in oracle["label"] and len(constant["action"]) == action_space_for(env_id).shape[0]


def test_reacher4d_oracle_reaches_like_the_reacher_oracle():
    goals = held_out(REACHER)[:4]  # same arm, same start states: only the observation differs
    four_d = evaluate_policy_on_goals(oracle_for("ReacherGoal4D-v0"), "ReacherGoal4D-v0", goals, seed=SEED)
    np.testing.assert_allclose(four_d.metric, evaluate_policy_on_goals(oracle_for(REACHER), REACHER, goals,
                                                                       seed=SEED).metric, atol=1e-3)
    assert four_d.success.all()


def test_best_constant_action_on_reacher_is_at_least_the_corner():
    goals = held_out(REACHER)
    action, metric = best_constant_action(REACHER, goals, seed=SEED)
    corner = evaluate_policy_on_goals(ConstantActionPolicy((1.0, 1.0)), REACHER, goals, seed=SEED)
    assert metric >= corner.mean_metric
    assert np.all(np.abs(action) <= 1.0)


def test_constant_action_candidates():
    pointmass = constant_action_candidates(action_space_for(POINTMASS))
    assert pointmass.shape == (25, 2) and np.all(pointmass[0] == 0) and [1, -1] in pointmass.tolist()
    ant = constant_action_candidates(gym.spaces.Box(-1, 1, shape=(8,)))
    assert ant.shape == (19, 8) and np.all(ant[0] == 0)
    assert oracle_for("AntGoal-v0") is None


def test_random_policy_is_reproducible_per_seed():
    goals = held_out(POINTMASS)[:4]
    space = action_space_for(POINTMASS)

    def run(seed):
        return evaluate_policy_on_goals(RandomActionPolicy(space, seed), POINTMASS, goals, seed=SEED).metric

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))
    policy = RandomActionPolicy(space, 3)
    first = policy.predict(np.zeros((5, 6)))[0]
    policy.reset()
    np.testing.assert_array_equal(policy.predict(np.zeros((5, 6)))[0], first)
    assert np.all(np.abs(first) <= 1.0)


def test_evaluate_task_metric_is_the_metric_of_evaluate_policy_on_goals():
    goals = held_out(POINTMASS)[:4]
    venv = VecNormalize(make_vec_env(POINTMASS, n_envs=2, seed=0))
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.learn(128)  # some VecNormalize statistics and a policy that is not the initial one
    stats = model.get_vec_normalize_env()
    values, steps = evaluate_task_metric(model, POINTMASS, goals, seed=SEED, vec_normalize=stats, return_steps=True)
    result = evaluate_policy_on_goals(model, POINTMASS, goals, seed=SEED, vec_normalize=stats)
    np.testing.assert_array_equal(values, result.metric)
    assert steps == result.total_steps == 4 * 50
    as_dict = result.to_dict()
    json.dumps(as_dict)
    assert as_dict["metric"] == values.tolist() and len(as_dict["saturation"]) == 4


def test_expert_policy_normalises_raw_observations(tmp_path):
    venv = VecNormalize(make_vec_env(POINTMASS, n_envs=2, seed=0))
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.learn(128)
    model.save(tmp_path / "expert.zip")
    venv.save(str(tmp_path / "expert_vecnormalize.pkl"))
    expert = ExpertPolicy(tmp_path / "expert.zip")  # finds the statistics beside the model
    assert expert.vec_normalize_path.endswith("expert_vecnormalize.pkl")
    goals = held_out(POINTMASS)[:3]
    mine = evaluate_policy_on_goals(expert, POINTMASS, goals, seed=SEED)
    theirs = evaluate_policy_on_goals(model, POINTMASS, goals, seed=SEED, vec_normalize=venv)
    np.testing.assert_allclose(mine.metric, theirs.metric, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="model.save"):
        ExpertPolicy(tmp_path / "missing.zip")
