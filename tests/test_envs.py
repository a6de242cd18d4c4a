"""Tests of the goal-conditioned envs in ``sb3_ml3.envs`` (envs/)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import sb3_ml3  # noqa: F401  (registers the envs)
from sb3_ml3 import envs
from sb3_ml3.envs import mountain_car, pointmass

ALL_IDS = envs.ENV_IDS
MUJOCO_IDS = ("ReacherGoal-v0", "ReacherGoal4D-v0", "AntGoal-v0")
NUMPY_IDS = ("PointmassGoal-v0", "MountainCarGoal-v0")
# Warnings the checkers raise that are expected for these envs (documented design choices).
INF_BOUNDS = ("minimum value is -infinity", "maximum value is infinity")  # MuJoCo observations are unbounded
PAPER_ACTION_RANGE = "symmetric and normalized Box action space"  # MountainCar's paper range [-0.25, 0.25]


def unexpected(record, env_id):
    allowed = INF_BOUNDS if env_id in MUJOCO_IDS else ()
    if env_id == "MountainCarGoal-v0":
        allowed += (PAPER_ACTION_RANGE,)
    return [str(w.message) for w in record if not any(a in str(w.message) for a in allowed)]


def rollout(env, seed, n_steps, actions_seed=0):
    """Observations, rewards and infos of ``n_steps`` seeded random actions (resetting when done)."""
    rng = np.random.default_rng(actions_seed)
    space = env.action_space
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, info)]
    for _ in range(n_steps):
        a = rng.uniform(space.low, space.high).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, info))
        if term or trunc:
            obs, info = env.reset()
            out.append((obs, 0.0, info))
    return out


# ----------------------------------------------------------------- registration / API


def test_ids_registered_and_registration_idempotent():
    for env_id in ALL_IDS:
        assert env_id in gym.registry
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.register_envs()  # again: no warning, no error
    assert gym.spec("PointmassGoal-v0").max_episode_steps == 50
    assert gym.spec("ReacherGoal-v0").max_episode_steps == 50
    assert gym.spec("AntGoal-v0").max_episode_steps == 200


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_goal_visible_in_observation(env_id):
    env = gym.make(env_id)
    u = env.unwrapped
    assert isinstance(u.goal_slice, slice) and u.goal_dim == u.goal_slice.stop - u.goal_slice.start
    assert env.observation_space.dtype == np.float32 and env.action_space.dtype == np.float32
    assert not hasattr(u, "compute_reward")  # else SB3's check_env wants a Dict goal-env observation
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs[u.goal_slice], info["goal"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(info["goal"], u.goal)
    obs, _, _, _, info = env.step(env.action_space.sample())
    np.testing.assert_allclose(obs[u.goal_slice], info["goal"], rtol=1e-6, atol=1e-6)
    assert {"goal", "distance", "initial_distance"} <= set(info)


# ----------------------------------------------------------------- env checkers


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_gymnasium_env_checker(env_id):
    from gymnasium.utils.env_checker import check_env

    # MuJoCo envs declare render mode "human", which the checker opens and which aborts the process
    # without a display; their rgb_array rendering is tested in test_mujoco_render_headless.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        env = gym.make(env_id, render_mode="rgb_array")
        check_env(env.unwrapped, skip_render_check=env_id in MUJOCO_IDS)
        env.close()
    assert unexpected(record, env_id) == []


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_sb3_env_checker(env_id):
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_env(gym.make(env_id), warn=True)
    assert unexpected(record, env_id) == []


def test_ppo_constructs_from_id():
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "ReacherGoal-v0", n_steps=64, batch_size=32, n_epochs=1, device="cpu", seed=0)
    model.learn(64)


# ----------------------------------------------------------------- determinism / pickling


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_same_seed_same_episode(env_id):
    a = rollout(gym.make(env_id), seed=7, n_steps=60)
    b = rollout(gym.make(env_id), seed=7, n_steps=60)
    for (oa, ra, ia), (ob, rb, ib) in zip(a, b, strict=True):
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb
        np.testing.assert_array_equal(ia["goal"], ib["goal"])
    c = rollout(gym.make(env_id, goal=None, task_split="all"), seed=8, n_steps=1)
    d = rollout(gym.make(env_id, goal=None, task_split="all"), seed=9, n_steps=1)
    assert not np.array_equal(c[0][2]["goal"], d[0][2]["goal"])


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_pickle_keeps_pinned_task(env_id):
    env = gym.make(env_id)
    goal = env.unwrapped.sample_tasks(1, "test", seed=11)[0]
    env.unwrapped.set_task(goal)
    clone = pickle.loads(pickle.dumps(env))
    _, info = clone.reset(seed=0)
    np.testing.assert_array_equal(info["goal"], goal)
    _, _, _, _, info = clone.step(clone.action_space.sample())
    assert np.isfinite(info["distance"])


def test_subproc_vec_env_runs():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = make_vec_env(
        "ReacherGoal-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, vec_env_kwargs={"start_method": "fork"}
    )
    try:
        obs = venv.reset()
        assert obs.shape == (2, 10)
        obs, rew, done, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
        assert rew.shape == (2,) and "goal" in infos[0]
        assert venv.get_attr("goal_slice") == [slice(4, 6)] * 2  # how ML3 finds the goal in the observation
    finally:
        venv.close()


# ----------------------------------------------------------------- task splits


SPLIT_CASES = [
    ("PointmassGoal-v0", lambda g: g[:, 0] > 0, lambda g: g[:, 0] < 0),
    ("ReacherGoal-v0", None, None),
    ("ReacherGoal4D-v0", None, None),
    ("AntGoal-v0", None, None),
    ("MountainCarGoal-v0", lambda g: (g[:, 0] >= 0.3) & (g[:, 0] < 0.4), lambda g: (g[:, 0] >= 0.4) & (g[:, 0] <= 0.5)),
]


@pytest.mark.parametrize("env_id,in_train,in_test", SPLIT_CASES)
def test_train_and_test_tasks_disjoint_and_deterministic(env_id, in_train, in_test):
    cls = envs.env_class(env_id)
    regions = cls.build_task_regions()
    train = envs.sample_tasks(env_id, 300, "train", seed=0)
    test = envs.sample_tasks(env_id, 300, "test", seed=0)
    assert train.shape == (300, cls.goal_dim) and train.dtype == np.float64
    assert regions["train"].contains(train).all() and not regions["test"].contains(train).any()
    assert regions["test"].contains(test).all() and not regions["train"].contains(test).any()
    assert regions["all"].contains(train).all() and regions["all"].contains(test).all()
    if in_train is not None:  # the paper's regions, stated independently of the region classes
        assert in_train(train).all() and not in_test(train).any()
        assert in_test(test).all() and not in_train(test).any()
    # deterministic per seed, different across seeds, prefix-stable
    np.testing.assert_array_equal(train, cls.sample_tasks(300, "train", seed=0))
    np.testing.assert_array_equal(train[:10], cls.sample_tasks(10, "train", seed=0))
    assert not np.array_equal(train[:10], cls.sample_tasks(10, "train", seed=1))
    # the env's own draws on reset follow its split
    for split in ("train", "test"):
        env = gym.make(env_id, task_split=split, goal=None)
        goals = np.array([env.reset(seed=s)[1]["goal"] for s in range(20)])
        assert regions[split].contains(goals).all()
        assert len({tuple(g) for g in goals}) > 1


def test_angular_splits_cover_interleaved_sectors():
    train = envs.sample_tasks("ReacherGoal-v0", 2000, "train", seed=0)
    test = envs.sample_tasks("ReacherGoal-v0", 2000, "test", seed=0)
    sector = lambda g: (np.degrees(np.arctan2(g[:, 1], g[:, 0])) % 360 // 45).astype(int)  # noqa: E731
    assert set(sector(train)) == {0, 2, 4, 6} and set(sector(test)) == {1, 3, 5, 7}
    radius = np.linalg.norm(train, axis=1)
    assert radius.min() >= 0.05 - 1e-12 and radius.max() <= 0.2 + 1e-12
    ant = envs.sample_tasks("AntGoal-v0", 50, "test", seed=0, goal_radius=3.0)
    np.testing.assert_allclose(np.linalg.norm(ant, axis=1), 3.0)
    env = gym.make("AntGoal-v0", goal_radius=3.0)
    np.testing.assert_array_equal(env.unwrapped.sample_tasks(50, "test", seed=0), ant)


@pytest.mark.parametrize("env_id,inner,outer", [("ReacherGoal-v0", (0.02, 0.05), (0.20, 0.21)),
                                                ("PointmassGoal-v0", (0.1, 0.5), (2.0, 2.4))])
def test_outside_split_lies_outside_both_splits_radii(env_id, inner, outer):
    goals = envs.sample_tasks(env_id, 2000, "outside", seed=0)
    radius = np.linalg.norm(goals, axis=1)
    on_inner = (radius >= inner[0] - 1e-12) & (radius <= inner[1] + 1e-12)
    on_outer = (radius >= outer[0] - 1e-12) & (radius <= outer[1] + 1e-12)
    assert (on_inner | on_outer).all()
    assert 0.45 < on_inner.mean() < 0.55  # each ring half of the time, whatever its area
    regions = envs.env_class(env_id).build_task_regions()
    assert not regions["all"].contains(goals).any()
    assert len(set(np.round(np.degrees(np.arctan2(goals[:, 1], goals[:, 0])) // 45))) == 8  # every bearing
    env = gym.make(env_id, task_split="outside")
    drawn = np.array([env.reset(seed=s)[1]["goal"] for s in range(20)])
    assert regions["outside"].contains(drawn).all()


def test_envs_without_radii_refuse_the_outside_split():
    for env_id in ("AntGoal-v0", "MountainCarGoal-v0"):
        with pytest.raises(ValueError, match="one of .*'train'"):
            gym.make(env_id, task_split="outside")
        with pytest.raises(ValueError, match="task_split"):
            envs.sample_tasks(env_id, 3, "outside", seed=0)
    with pytest.raises(ValueError, match="'outside' for goals outside"):
        gym.make("ReacherGoal-v0", task_split="inside")



@pytest.mark.parametrize("env_id", ALL_IDS)
def test_set_task_pins_until_cleared(env_id):
    env = gym.make(env_id, goal=None)
    u = env.unwrapped
    goal = u.sample_tasks(1, "test", seed=5)[0]
    u.set_task(goal)
    for s in range(3):
        _, info = env.reset(seed=s)
        np.testing.assert_array_equal(info["goal"], goal)
        assert info["task_pinned"]
    u.clear_task()
    assert u.pinned_task is None
    _, info = env.reset(seed=0)
    assert not np.array_equal(info["goal"], goal) and not info["task_pinned"]
    pinned = gym.make(env_id, goal=goal.tolist())
    np.testing.assert_array_equal(pinned.reset(seed=1)[1]["goal"], goal)


def test_mountain_car_default_is_the_paper_task():
    env = gym.make("MountainCarGoal-v0")
    _, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["goal"], [0.5])
    np.testing.assert_array_equal(env.unwrapped.state, [-0.55, 0.0])


# ----------------------------------------------------------------- rewards


def test_reward_formulas_on_recorded_steps():
    # ReacherGoal: R = -d + 1/(d + 0.001) - sum|a|, d from the observation's fingertip-goal vector
    for env_id, near, eps in (("ReacherGoal-v0", 1.0, 0.001), ("AntGoal-v0", 5.0, 0.25)):
        env = gym.make(env_id)
        obs, info = env.reset(seed=1)
        rng = np.random.default_rng(0)
        for _ in range(30):
            a = rng.uniform(-1.2, 1.2, size=env.action_space.shape)  # out-of-range actions are clipped
            obs, r, _, _, info = env.step(a)
            applied = np.clip(a, -1, 1)
            if env_id == "ReacherGoal-v0":
                d = np.linalg.norm(obs[8:10].astype(np.float64))
                tol = 1e-5 * (1 + 1 / (d + eps) ** 2)  # float32 observation
            else:
                d = np.linalg.norm(env.unwrapped.data.qpos[:2] - info["goal"])
                tol = 1e-9
                assert info["progress"] == pytest.approx(info["initial_distance"] - d)
            assert info["distance"] == pytest.approx(d, abs=1e-6)
            assert r == pytest.approx(-d + near / (d + eps) - np.abs(applied).sum(), abs=tol, rel=1e-6)
    # PointmassGoal: -distance - 0.01 |a|^2 ;  MountainCarGoal: -|x - g|
    env = gym.make("PointmassGoal-v0")
    obs, _ = env.reset(seed=2)
    for a in np.random.default_rng(1).uniform(-1, 1, size=(30, 2)):
        obs, r, _, _, info = env.step(a)
        d = np.linalg.norm(obs[:2].astype(np.float64) - obs[4:6])
        assert r == pytest.approx(-d - 0.01 * (a @ a), abs=1e-5)
    env = gym.make("MountainCarGoal-v0")
    obs, _ = env.reset(seed=2)
    for a in np.random.default_rng(1).uniform(-0.25, 0.25, size=(30, 1)):
        obs, r, _, _, info = env.step(a)
        assert r == pytest.approx(-abs(env.unwrapped.state[0] - 0.5)) == -info["distance"]


# ----------------------------------------------------------------- dynamics


def test_pointmass_numpy_and_torch_dynamics_agree():
    rng = np.random.default_rng(0)
    n, steps = 64, 60
    state = np.concatenate([rng.uniform(-2.5, 2.5, (n, 2)), rng.uniform(-2, 2, (n, 2))], axis=1)
    goal = rng.uniform(-2, 2, (n, 2))
    ts, tg = torch.tensor(state), torch.tensor(goal)
    hit_wall = False
    for _ in range(steps):
        a = rng.uniform(-1.5, 1.5, (n, 2))  # includes out-of-range actions
        state = pointmass.numpy_step(state, a)
        ts = pointmass.torch_step(ts, torch.tensor(a))
        assert ts.dtype == torch.float64
        np.testing.assert_allclose(ts.numpy(), state, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            pointmass.torch_reward(ts, torch.tensor(a), tg).numpy(), pointmass.numpy_reward(state, a, goal), atol=1e-12
        )
        hit_wall |= bool(np.any(np.abs(state[:, :2]) == pointmass.ARENA))
    assert hit_wall  # the wall branch was exercised
    # the env runs exactly these equations
    env = gym.make("PointmassGoal-v0")
    env.reset(seed=0)
    s = torch.tensor(env.unwrapped.state)
    for a in rng.uniform(-1, 1, (50, 2)):
        env.step(a)
        s = env.unwrapped.torch_step(s, torch.tensor(a))
        np.testing.assert_allclose(s.numpy(), env.unwrapped.state, atol=1e-12)


def test_mountain_car_numpy_and_torch_dynamics_agree():
    rng = np.random.default_rng(0)
    n = 64
    state = np.stack([rng.uniform(-1.2, 0.5, n), rng.uniform(-1.5, 1.5, n)], axis=1)
    goal = rng.uniform(0.3, 0.5, (n, 1))
    ts = torch.tensor(state)
    for _ in range(100):
        a = rng.uniform(-0.3, 0.3, (n, 1))
        state = mountain_car.numpy_step(state, a)
        ts = mountain_car.torch_step(ts, torch.tensor(a))
        np.testing.assert_allclose(ts.numpy(), state, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            mountain_car.torch_reward(ts, torch.tensor(a), torch.tensor(goal)).numpy(),
            mountain_car.numpy_reward(state, a, goal),
            atol=1e-12,
        )
    env = gym.make("MountainCarGoal-v0")
    env.reset(seed=0)
    s = torch.tensor(env.unwrapped.state)
    for a in rng.uniform(-0.25, 0.25, (100, 1)):
        env.step(a)
        s = env.unwrapped.torch_step(s, torch.tensor(a))
        np.testing.assert_allclose(s.numpy(), env.unwrapped.state, atol=1e-12)


def test_torch_dynamics_are_differentiable():
    actions = torch.zeros(20, 2, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    ret = 0.0
    for t in range(20):
        s = pointmass.torch_step(s, actions[t])
        ret = ret + pointmass.torch_reward(s, actions[t], torch.tensor([1.0, 0.0], dtype=torch.float64))
    ret.backward()
    assert torch.isfinite(actions.grad).all()
    assert actions.grad[0, 0] > 0  # accelerating towards the goal at +x raises the return
    force = torch.zeros(30, 1, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([-0.55, 0.0], dtype=torch.float64)
    for t in range(30):
        s = mountain_car.torch_step(s, force[t])
    s[0].backward()
    assert torch.isfinite(force.grad).all() and force.grad.abs().sum() > 0


def _mountain_car_final_distance(policy):
    env = gym.make("MountainCarGoal-v0")
    obs, info = env.reset(seed=0)
    positions, done = [], False
    while not done:
        obs, _, term, trunc, info = env.step(np.array([policy(obs[0], obs[1])], dtype=np.float32))
        positions.append(obs[0])
        done = term or trunc
    return info["distance"], max(positions)


def test_mountain_car_greedy_fails_swing_back_succeeds():
    greedy_dist, greedy_max = _mountain_car_final_distance(lambda x, v: 0.25)
    assert greedy_max < 0.0 and greedy_dist > 0.7  # stalls on the hill, rolls back
    swing_dist, _ = _mountain_car_final_distance(lambda x, v: 0.25 if v >= 0 else -0.25)
    assert swing_dist < 1e-6  # at the goal, and held there, at the last step


# ----------------------------------------------------------------- learning


@pytest.mark.slow
def test_ppo_learns_pointmass():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    goals = envs.sample_tasks("PointmassGoal-v0", 10, "train", seed=123)

    def evaluate(model):
        env = gym.make("PointmassGoal-v0")
        finals, returns = [], []
        for k, g in enumerate(goals):
            env.unwrapped.set_task(g)
            obs, _ = env.reset(seed=1000 + k)
            ret, done = 0.0, False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, term, trunc, info = env.step(action)
                ret, done = ret + r, term or trunc
            finals.append(info["distance"])
            returns.append(ret)
        return float(np.mean(finals)), float(np.mean(returns))

    venv = make_vec_env("PointmassGoal-v0", n_envs=4, seed=0)
    model = PPO(
        "MlpPolicy", venv, n_steps=512, batch_size=128, n_epochs=5, learning_rate=1e-3, gamma=0.95, seed=0, device="cpu"
    )
    dist0, ret0 = evaluate(model)
    model.learn(30_000)
    dist1, ret1 = evaluate(model)
    assert dist1 < dist0 - 0.5, (dist0, dist1)
    assert ret1 > ret0 + 20, (ret0, ret1)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_bad_inputs_raise_clear_errors(env_id):
    with pytest.raises(ValueError, match="task_split must be one of"):
        gym.make(env_id, task_split="validation")
    with pytest.raises(ValueError, match="task_split must be one of"):
        envs.sample_tasks(env_id, 3, "meta-test")
    env = gym.make(env_id)
    env.reset(seed=0)
    u = env.unwrapped
    far = np.full(u.goal_dim, 100.0)
    with pytest.raises(ValueError, match="goal"):
        u.set_task(far)
    with pytest.raises(ValueError, match=r"goal of shape"):
        u.set_task(np.zeros(u.goal_dim + 1))
    with pytest.raises(ValueError, match="finite"):
        u.set_task(np.full(u.goal_dim, np.nan))
    with pytest.raises(ValueError, match=r"expects one action of shape"):
        env.step(np.zeros(env.action_space.shape[0] + 1, dtype=np.float32))
    with pytest.raises(ValueError, match=r"expects one action of shape"):
        env.step(np.zeros((2, *env.action_space.shape), dtype=np.float32))


def test_goal_out_of_reach_messages():
    with pytest.raises(ValueError, match=r"out of the ReacherGoal arm's reach.*0\.21"):
        gym.make("ReacherGoal-v0").unwrapped.set_task([0.2, 0.2])
    with pytest.raises(ValueError, match="outside PointmassGoal's arena"):
        gym.make("PointmassGoal-v0").unwrapped.set_task([3.0, 0.0])
    with pytest.raises(ValueError, match="off MountainCarGoal's track"):
        gym.make("MountainCarGoal-v0").unwrapped.set_task([0.6])
    with pytest.raises(ValueError, match="goal_radius"):
        gym.make("AntGoal-v0", goal_radius=-1.0)
    with pytest.raises(gym.error.Error):
        gym.make("NoSuchGoal-v0")


# ----------------------------------------------------------------- rendering


@pytest.mark.parametrize("env_id", NUMPY_IDS)
def test_numpy_render_shows_the_goal(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    u = env.unwrapped
    frames = []
    for split in ("train", "test"):
        u.set_task(u.sample_tasks(1, split, seed=0)[0])
        env.reset(seed=0)
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        frames.append(frame)
    assert (frames[0] != frames[1]).any()  # the goal moved in the picture
    assert gym.make(env_id).unwrapped.render() is None  # no render_mode: nothing drawn


def _mujoco_gl_works() -> tuple[bool, str]:
    """Probe GL rendering in a subprocess: a missing backend can abort the process."""
    code = (
        "import sb3_ml3, gymnasium as gym\n"
        "e = gym.make('ReacherGoal-v0', render_mode='rgb_array'); e.reset(seed=0)\n"
        "print(e.render().shape)\n"
    )
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "GL probe timed out"
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return False, f"no working MuJoCo GL backend (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): {tail}"
    return True, ""


@pytest.fixture(scope="module")
def mujoco_gl():
    ok, why = _mujoco_gl_works()
    if not ok:
        pytest.skip(why + " -- install libegl1 or libosmesa6 to run this test")


@pytest.mark.parametrize("env_id", MUJOCO_IDS)
def test_mujoco_render_headless(env_id, mujoco_gl):
    env = gym.make(env_id, render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
    env.close()


def _red_pixels(frame: np.ndarray) -> np.ndarray:
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return (r > 150) & (g < 80) & (b < 80)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` dilated by ``pixels`` (a square neighbourhood)."""
    padded = np.pad(mask, pixels)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def test_ant_goal_marker_in_frames(mujoco_gl):
    """AntGoal's frames show the goal as a red disc on the floor; the marker is render-only."""
    from gymnasium.envs.mujoco.ant_v5 import AntEnv

    size = 96
    env = gym.make("AntGoal-v0", render_mode="rgb_array", width=size, height=size)
    plain = gym.make("AntGoal-v0")  # never rendered: the reference for "rendering changes nothing"
    u = env.unwrapped
    frames, bare, obs = [], [], []
    for goal in ((2.0, 0.0), (-2.0, 0.0)):  # right and left of the start in the default view
        u.set_task(goal)
        plain.unwrapped.set_task(goal)
        o, _ = env.reset(seed=0)  # same seed: the same ant pose, only the goal differs
        np.testing.assert_array_equal(o, plain.reset(seed=0)[0])
        obs.append(o)
        frames.append(env.render())
        bare.append(AntEnv.render(u))  # Ant-v5's own frame: no marker
    red = [_red_pixels(f) for f in frames]
    assert not any(_red_pixels(f).any() for f in bare), "red pixels without the marker"
    assert all(m.sum() >= 10 for m in red), [int(m.sum()) for m in red]
    cols = [np.nonzero(m)[1].mean() for m in red]
    assert cols[0] > size / 2 > cols[1], cols  # the marker follows the goal
    for frame, plain_frame, m in zip(frames, bare, red):
        diff = (frame != plain_frame).any(axis=2)  # the marker and its blended edge, nothing else
        assert diff.any() and not (diff & ~_grow(m, 2)).any()
    np.testing.assert_array_equal(obs[0][: u.goal_slice.start], obs[1][: u.goal_slice.start])
    # rendering between steps leaves the rollout as it is without rendering
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
        o, r, *_ = env.step(a)
        env.render()
        o_plain, r_plain, *_ = plain.step(a)
        np.testing.assert_array_equal(o, o_plain)
        assert r == r_plain
    env.close()
