"""Policy clips: frame counts, goal markers, captions, atomic writes and the no-GL error.

PointmassGoal clips are drawn with numpy and always tested; the ReacherGoal clip needs a headless
MuJoCo GL backend (EGL or OSMesa) and is skipped, with the reason, where rendering is unavailable.
"""

from __future__ import annotations

import os
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import sb3_ml3  # noqa: F401  (registers the envs)
from sb3_ml3.envs.pointmass import ARENA, PointmassGoalEnv
from sb3_ml3.envs.reacher import ReacherGoalEnv
from sb3_ml3.experiments import clips
from sb3_ml3.experiments.clips import CAPTION_HEIGHT, FRAME_SIZE, RenderUnavailable, render_policy_clip

GOALS = np.array([[-1.5, 1.0], [1.0, -1.5]])


class ConstantPolicy:
    """SB3-style ``predict``: the same action for every observation of the batch; records what it saw."""

    def __init__(self, action) -> None:
        self.action = np.asarray(action, dtype=np.float32)
        self.seen: list[np.ndarray] = []

    def predict(self, obs, deterministic=True):
        assert deterministic
        self.seen.append(np.array(obs))
        return np.tile(self.action, (len(obs), 1)), None


def _red(frames: np.ndarray) -> np.ndarray:
    """Mask of the goal marker's red (PointmassGoal draws it in (220, 60, 60)) in the env picture."""
    rgb = frames[..., :FRAME_SIZE, :, :3].astype(int)
    return (rgb[..., 0] > 180) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)


def test_pointmass_clip_frames_goal_marker_and_caption(tmp_path):
    path = tmp_path / "pm.gif"
    assert render_policy_clip(ConstantPolicy([0.5, 0.5]), "PointmassGoal-v0", GOALS, path, title="const") == str(path)
    assert path.read_bytes()[:6] == b"GIF89a"
    assert path.stat().st_size < 2_000_000
    frames = iio.imread(path, index=None)
    # one frame for the reset and one per step of the 50-step episodes, for both goals
    assert frames.shape[:3] == (2 * 51, FRAME_SIZE + CAPTION_HEIGHT, FRAME_SIZE)
    red = _red(frames)
    assert red.reshape(len(frames), -1).sum(axis=1).min() > 50, "the goal marker must be in every frame"
    for i, goal in enumerate(GOALS):  # the marker sits where the goal is (arena [-2.5, 2.5]^2, y up)
        rows, cols = np.nonzero(red[i * 51])
        expected = ((ARENA - goal[1]) / (2 * ARENA) * FRAME_SIZE, (goal[0] + ARENA) / (2 * ARENA) * FRAME_SIZE)
        assert abs(rows.mean() - expected[0]) < 4 and abs(cols.mean() - expected[1]) < 4
    caption = frames[:, FRAME_SIZE:, :, :3].astype(int).sum(axis=-1)
    assert (caption < 200).sum(axis=(1, 2)).min() > 100, "every frame has caption text"
    assert not np.array_equal(frames[1, FRAME_SIZE:], frames[2, FRAME_SIZE:]), "the step counter changes"
    # each episode's last frame is held longer
    assert iio.immeta(path, index=50)["duration"] > iio.immeta(path, index=49)["duration"]


def test_max_frames_per_goal_and_observation_normalisation(tmp_path):
    class Normalizer:
        def normalize_obs(self, obs):
            return np.full_like(obs, 7.0)

    policy = ConstantPolicy([0.0, 0.0])
    path = tmp_path / "short.gif"
    render_policy_clip(policy, "PointmassGoal-v0", GOALS[:1], path, vec_normalize=Normalizer(), max_frames_per_goal=10)
    assert len(iio.imread(path, index=None)) == 10  # steps 0, 6, ..., 48 and the last one, 50
    assert len(policy.seen) == 50 and all(o.shape == (1, 6) and np.all(o == 7.0) for o in policy.seen)


def test_failed_write_leaves_earlier_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "clip.gif"
    render_policy_clip(ConstantPolicy([0.1, 0.0]), "PointmassGoal-v0", GOALS[:1], path, max_frames_per_goal=4)
    before = path.read_bytes()

    def broken_writer(tmp, frames, durations, fps):
        with open(tmp, "wb") as f:
            f.write(b"GIF89a half a clip")
        raise OSError("disk full")

    monkeypatch.setattr(clips, "_write_gif", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        render_policy_clip(ConstantPolicy([-0.1, 0.0]), "PointmassGoal-v0", GOALS[:1], path, max_frames_per_goal=4)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["clip.gif"], "no temporary file is left behind"


def test_bad_arguments_are_clear(tmp_path, monkeypatch):
    policy = ConstantPolicy([0.0, 0.0])
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        render_policy_clip(policy, "PointmassGoal-v0", GOALS, tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="1 to"):
        render_policy_clip(policy, "PointmassGoal-v0", np.zeros((clips.MAX_GOALS + 1, 2)), tmp_path / "c.gif")
    with pytest.raises(ValueError, match="must not set 'goal'"):
        render_policy_clip(policy, "PointmassGoal-v0", GOALS, tmp_path / "c.gif", env_kwargs={"goal": [1, 1]})
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if imageio-ffmpeg were not installed
    with pytest.raises(RuntimeError, match=r"use a \.gif path"):
        render_policy_clip(policy, "PointmassGoal-v0", GOALS, tmp_path / "clip.mp4")
    assert os.listdir(tmp_path) == []


def test_mp4_when_ffmpeg_is_available(tmp_path):
    try:
        clips._check_ffmpeg()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    path = tmp_path / "clip.mp4"
    render_policy_clip(ConstantPolicy([0.3, 0.3]), "PointmassGoal-v0", GOALS[:1], path, max_frames_per_goal=8)
    assert path.read_bytes()[4:8] == b"ftyp"


@pytest.mark.filterwarnings("ignore:.*RGB-array rendering should return")
def test_render_failure_raises_render_unavailable_naming_the_package(tmp_path, monkeypatch):
    def no_gl(self):
        raise RuntimeError("gladLoadGL error")

    monkeypatch.setattr(ReacherGoalEnv, "render", no_gl)
    with pytest.raises(RenderUnavailable, match="apt-get install -y libegl1"):
        render_policy_clip(ConstantPolicy([0.0, 0.0]), "ReacherGoal-v0", [[0.1, 0.1]], tmp_path / "r.gif")
    monkeypatch.setattr(PointmassGoalEnv, "render", lambda self: None)
    with pytest.raises(RenderUnavailable, match="no RGB frame"):
        render_policy_clip(ConstantPolicy([0.0, 0.0]), "PointmassGoal-v0", GOALS, tmp_path / "p.gif")
    assert os.listdir(tmp_path) == []


def test_reacher_clip_shows_the_target_where_the_goal_is(tmp_path):
    try:
        clips.check_rendering("ReacherGoal-v0")
    except RenderUnavailable as exc:
        pytest.skip(f"no headless MuJoCo rendering here: {exc}")
    path = tmp_path / "reacher.gif"
    goals = [[0.15, 0.0], [-0.15, 0.0]]  # right of and left of the arm's base, seen from above
    render_policy_clip(ConstantPolicy([0.0, 0.0]), "ReacherGoal-v0", goals, path, max_frames_per_goal=5)
    frames = iio.imread(path, index=None)
    assert frames.shape[:3] == (10, FRAME_SIZE + CAPTION_HEIGHT, FRAME_SIZE)
    rgb = frames[:, :FRAME_SIZE, :, :3].astype(int)
    target = (rgb[..., 0] > 50) & (rgb[..., 0] > 2 * rgb[..., 1]) & (rgb[..., 0] > 2 * rgb[..., 2])
    assert target.reshape(10, -1).sum(axis=1).min() >= 10, "the red target ball is visible in every frame"
    centre_x = [np.nonzero(target[i])[1].mean() for i in (0, 5)]
    assert centre_x[0] > FRAME_SIZE / 2 + 20 and centre_x[1] < FRAME_SIZE / 2 - 20
