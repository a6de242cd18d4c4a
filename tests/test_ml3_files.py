"""ML3's model files: loading never runs code, checks what the constructor checks, keeps the pending outer step."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_ml3 import ML3
from sb3_ml3.ml3.persistence import ModelFileError

ENV = "PointmassGoal-v0"
SMALL = dict(n_steps=16, batch_size=16, n_epochs=2, policy_kwargs={"net_arch": [8]}, meta_loss_kwargs={"hidden_sizes": (8,)})


def _vec(n=2, seed=0):
    return make_vec_env(ENV, n_envs=n, seed=seed, env_kwargs={"task_split": "train"})


class _Payload:
    """Unpickling this creates a file: the proof that a loader ran code from the archive."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite(path, member, data):
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members[member] = data
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)


def test_a_crafted_tensor_member_is_refused_without_running_it(tmp_path):
    model = ML3("MlpPolicy", _vec(), seed=0, **SMALL)
    path = tmp_path / "model.zip"
    model.save(path)
    marker = tmp_path / "pwned"
    _rewrite(path, "policy.pth", pickle.dumps({"x": _Payload(str(marker))}, protocol=2))
    with pytest.raises(ModelFileError, match="policy.pth is corrupted or holds more than tensors"):
        ML3.load(path)
    assert not marker.exists()


def test_an_sb3_format_file_is_refused_without_unpickling_it(tmp_path):
    PPO("MlpPolicy", _vec(), n_steps=16, batch_size=16).save(tmp_path / "ppo.zip")
    with pytest.raises(ModelFileError, match="SB3's save.*can run code"):
        ML3.load(tmp_path / "ppo.zip")


def test_a_crafted_class_name_is_refused(tmp_path):
    model = ML3("MlpPolicy", _vec(), seed=0, **dict(SMALL, policy_kwargs={"net_arch": [8], "activation_fn": torch.nn.Tanh}))
    path = tmp_path / "model.zip"
    model.save(path)
    assert isinstance(ML3.load(path).policy.mlp_extractor.policy_net[1], torch.nn.Tanh)  # classes travel by name
    with zipfile.ZipFile(path) as zf:
        document = json.loads(zf.read("ml3.json"))
    document["settings"]["policy_kwargs"]["activation_fn"] = {":class:": "os.system"}
    _rewrite(path, "ml3.json", json.dumps(document))
    with pytest.raises(ModelFileError, match="refusing the class 'os.system'"):
        ML3.load(path)


def test_crafted_counts_and_slices_are_refused_with_the_files_error(tmp_path):
    """n_envs, goal_slice and task_frame_dim come from the file's JSON when no env is given: a value int() would cut or
    coerce, or a slice outside the observation, is a ModelFileError that names it, not a silently different model."""
    model = ML3("MlpPolicy", _vec(), seed=0, **SMALL)
    path = tmp_path / "model.zip"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        document = json.loads(zf.read("ml3.json"))
    loaded = ML3.load(path)
    assert loaded.goal_slice == model.goal_slice and loaded.n_envs == 2 and loaded.task_frame_dim is None
    for key, bad in (("n_envs", 2.5), ("n_envs", "2"), ("n_envs", 0), ("task_frame_dim", 7.9), ("task_frame_dim", -1),
                     ("task_frame_dim", True), ("goal_slice", [0.5, 2]), ("goal_slice", [2]), ("goal_slice", "2:4"),
                     ("goal_slice", [3, 2]), ("goal_slice", [0, 99])):
        _rewrite(path, "ml3.json", json.dumps(dict(document, **{key: bad})))
        with pytest.raises(ModelFileError, match=key):
            ML3.load(path)


def test_load_checks_what_the_constructor_checks_and_refuses_non_finite_weights(tmp_path):
    model = ML3("MlpPolicy", _vec(n=4), seed=0, **dict(SMALL, batch_size=64))
    path = tmp_path / "model.zip"
    model.save(path)
    with pytest.raises(ValueError, match=r"batch_size \(64\) exceeds the rollout size"):
        ML3.load(path, env=_vec(n=1))
    state = {k: v.clone() for k, v in model.meta_loss.state_dict().items()}
    state[next(iter(state))][0] = float("nan")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _rewrite(path, "meta_loss.pth", buffer.getvalue())
    with pytest.raises(ModelFileError, match="meta_loss weights contain NaN"):
        ML3.load(path)
    with open(tmp_path / "junk.zip", "wb") as f:
        f.write(b"not a zip")
    with pytest.raises(ModelFileError, match="corrupted"):
        ML3.load(tmp_path / "junk.zip")


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_resumed_meta_training_equals_the_uninterrupted_run(tmp_path, inner_optimizer):
    """Save after 3 rollouts, load (same env, same random state), 3 more: phi and theta equal an
    uninterrupted 6 rollouts, which needs the pending outer step and every optimizer state in the file."""
    settings = dict(SMALL, meta_train=True, seed=0, inner_optimizer=inner_optimizer,
                    learning_rate=3e-3 if inner_optimizer == "adam" else 3e-2)
    rollout = 16 * 2

    def run(interrupt: bool) -> ML3:
        env = _vec()
        model = ML3("MlpPolicy", env, **settings)
        model.learn(3 * rollout)
        if interrupt:
            model.save(tmp_path / "model.zip")
            rng = torch.get_rng_state(), np.random.get_state()
            model = ML3.load(tmp_path / "model.zip", env=env, force_reset=False)
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])
        model.learn(3 * rollout, reset_num_timesteps=False)
        return model

    straight, resumed = run(False), run(True)
    assert resumed.n_meta_updates == straight.n_meta_updates == 5
    for (name, a), b in zip(straight.meta_loss.state_dict().items(), resumed.meta_loss.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(straight.meta_loss.net[0].weight, ML3("MlpPolicy", _vec(), **settings).meta_loss.net[0].weight)


def test_without_the_pending_step_the_resumed_run_loses_an_outer_step(tmp_path):
    """The check above is not vacuous: a file without the pending step resumes one outer step short."""
    env = _vec()
    model = ML3("MlpPolicy", env, meta_train=True, seed=0, **SMALL)
    model.learn(3 * 32)
    assert model.n_meta_updates == 2 and model.has_pending_outer_step
    model.save(tmp_path / "with.zip")
    model._pending = None
    model.save(tmp_path / "without.zip")
    for name, expected in (("with.zip", 3), ("without.zip", 2)):
        loaded = ML3.load(tmp_path / name, env=env, force_reset=False)
        loaded.learn(32, reset_num_timesteps=False)
        assert loaded.n_meta_updates == expected, name


def test_unbounded_observation_spaces_round_trip(tmp_path):
    """ReacherGoal's observations are unbounded: JSON has no infinity, the file must still hold them."""
    env = make_vec_env("ReacherGoal-v0", n_envs=2, seed=0)
    model = ML3("MlpPolicy", env, seed=0, **SMALL)
    model.save(tmp_path / "reacher.zip")
    loaded = ML3.load(tmp_path / "reacher.zip")
    assert loaded.observation_space == model.observation_space and np.isinf(loaded.observation_space.low).all()
    obs = env.reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
