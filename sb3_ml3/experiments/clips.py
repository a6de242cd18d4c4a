"""Short clips of a policy on a few held-out goals, so a number is never believed unseen.

A task metric can look fine while the policy does something silly (the arm folded against its
joint limit whatever the goal, an ant that slides instead of walking).  :func:`render_policy_clip`
runs one deterministic episode per goal -- the same episodes :func:`~sb3_ml3.evaluation.
evaluate_task_metric` scores (same env seeds ``seed + i``, same observation normalisation) -- renders
them with ``render_mode="rgb_array"`` and writes them, one after another, into a GIF (or MP4).

Each frame is the env's own picture with its goal marker (ReacherGoal's red target ball, seen from
above; AntGoal's red floor disc; PointmassGoal's and MountainCarGoal's red discs, drawn with numpy),
resampled to ``FRAME_SIZE`` squared, above a caption strip with the title, the goal index and
position, the step and the current distance to the goal.  Captions use a glyph atlas rendered once
with matplotlib's bundled DejaVu Sans Mono (Agg), so no font is downloaded and frames stay cheap.

MuJoCo envs need a headless OpenGL library (see :mod:`sb3_ml3.envs.rendering`); when rendering
fails, :class:`RenderUnavailable` says which Debian package to install, and callers such as
``ml3 compare --render`` can catch it and carry on without clips.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_ml3.atomic import atomic_path
from sb3_ml3.envs import env_class

FRAME_SIZE = 240  #: side of the env picture in each frame, in pixels
CAPTION_HEIGHT = 48  #: pixels of the caption strip below it (240 + 48 is a multiple of 16, for MP4)
FONT_SIZE = 11  #: caption font size in pixels (34 characters per 240-pixel line)
DEFAULT_FPS = 15  #: a 50-step episode then plays in about 3.5 s
DEFAULT_MAX_FRAMES_PER_GOAL = 60  #: longer episodes show every k-th step (AntGoal's 200: every 4th)
HOLD_LAST_MS = 600  #: extra time on each episode's last frame, to see where the policy ended
MAX_GOALS = 6  #: a clip is for looking at a few goals, not for evaluation
NO_TIME_LIMIT_STEPS = 1000  #: episode cap for envs registered without max_episode_steps
#: top-down camera on the reacher's arena: the goal ball and the whole reach (0.21) in view
REACHER_CAMERA = {"distance": 0.6, "elevation": -90.0, "azimuth": 90.0, "lookat": np.zeros(3)}
GL_HINT = (
    "MuJoCo renders headless through EGL or OSMesa: install one (Debian/Ubuntu: "
    "`apt-get install -y libegl1 libgl1-mesa-dri`, or `apt-get install -y libosmesa6` and set "
    "MUJOCO_GL=osmesa) and PyOpenGL, or set MUJOCO_GL to a backend that works on this machine"
)


class RenderUnavailable(RuntimeError):
    """The env cannot render ``rgb_array`` frames here (no headless GL library, or no such mode)."""


def render_policy_clip(
    policy: Any,
    env_id: str,
    goals: Sequence[Sequence[float]] | Sequence[float] | np.ndarray,
    path: str | os.PathLike,
    *,
    seed: int = 12345,
    vec_normalize: Any = None,
    env_kwargs: dict[str, Any] | None = None,
    fps: float | None = None,
    max_frames_per_goal: int | None = None,
    title: str | None = None,
) -> str:
    """Write a clip of ``policy``'s deterministic episodes on ``goals`` to ``path``; returns the path.

    Args:
        policy: anything with SB3's ``predict(obs, deterministic=True) -> (actions, state)``; it gets
            a batch of one observation, shape ``(1, obs_dim)``, as ``evaluate_task_metric`` batches them.
        env_id: a registered id, e.g. ``"ReacherGoal-v0"``; made with ``goal=goal`` per episode.
        goals: at most ``MAX_GOALS`` goals, shape ``(n, goal_dim)`` (or ``(n,)`` for 1-D goals).
        path: ``.gif`` (always works) or ``.mp4`` (needs imageio's ffmpeg plugin, imageio-ffmpeg).
            Written atomically: a failed run leaves an earlier file at ``path`` untouched.
        seed: episode ``i`` resets with ``seed + i`` (``evaluate_task_metric``'s seeds).
        vec_normalize: the training env's ``VecNormalize``; observations go through its
            ``normalize_obs`` before ``predict``.
        env_kwargs: extra ``gym.make`` arguments (MuJoCo envs default to ``FRAME_SIZE`` pixels and,
            for ReacherGoal, a top-down camera).
        fps: frames per second of the clip (default ``DEFAULT_FPS``).
        max_frames_per_goal: frames per episode at most (default ``DEFAULT_MAX_FRAMES_PER_GOAL``):
            longer episodes show every k-th step, always with the first and the last.
        title: the caption's first line, e.g. ``"PPO [64,64] seed 0"`` (default ``env_id``).

    Raises:
        RenderUnavailable: the env cannot render here (the message names the package to install).
        ValueError: a bad path suffix, too many goals or bad frame limits.
        RuntimeError: ``.mp4`` without an ffmpeg writer (use ``.gif``).
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"clip path {path!r} must end in .gif or .mp4")
    if suffix == ".mp4":
        _check_ffmpeg()
    goals = np.asarray(goals, dtype=np.float64)
    goals = goals[:, None] if goals.ndim == 1 else goals
    if goals.ndim != 2 or not 1 <= len(goals) <= MAX_GOALS:
        raise ValueError(f"goals must be 1 to {MAX_GOALS} goals of shape (n, goal_dim); got shape {goals.shape}")
    max_frames = DEFAULT_MAX_FRAMES_PER_GOAL if max_frames_per_goal is None else int(max_frames_per_goal)
    if max_frames < 2:
        raise ValueError(f"max_frames_per_goal must be at least 2 (first and last step); got {max_frames}")
    fps = float(DEFAULT_FPS if fps is None else fps)
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    kwargs = _env_kwargs(env_id, env_kwargs)
    title = env_id if title is None else str(title)

    frames: list[np.ndarray] = []
    durations: list[float] = []  # milliseconds per frame
    for i, goal in enumerate(goals):
        episode = _episode_frames(policy, env_id, goal, seed + i, vec_normalize, kwargs, max_frames)
        where = f"goal {i + 1}/{len(goals)} at (" + ", ".join(f"{g:+.2f}" for g in goal) + ")"
        for step, n_steps, distance, picture in episode:
            frames.append(_compose(picture, [title, where, f"step {step:>3}/{n_steps}  dist {distance:.3f}"]))
            durations.append(1000.0 / fps)
        durations[-1] += HOLD_LAST_MS
    with atomic_path(path, suffix=suffix) as tmp:
        (_write_mp4 if suffix == ".mp4" else _write_gif)(tmp, frames, durations, fps)
    return path


def check_rendering(env_id: str, env_kwargs: dict[str, Any] | None = None) -> None:
    """Render one frame of ``env_id`` or raise :class:`RenderUnavailable` (e.g. to skip tests)."""
    env = gym.make(env_id, render_mode="rgb_array", **_env_kwargs(env_id, env_kwargs))
    try:
        env.reset(seed=0)
        _render(env, env_id)
    finally:
        env.close()


# ---- episodes -----------------------------------------------------------------------


def _is_mujoco(env_id: str) -> bool:
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    cls = env_class(env_id)
    return isinstance(cls, type) and issubclass(cls, MujocoEnv)


def _env_kwargs(env_id: str, env_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``env_kwargs`` plus the clip's defaults: frame size and, for ReacherGoal, the top-down camera."""
    kwargs = dict(env_kwargs or {})
    for fixed in ("goal", "render_mode"):
        if fixed in kwargs:
            raise ValueError(f"env_kwargs must not set {fixed!r}: the clip sets it for each episode")
    if _is_mujoco(env_id):
        from sb3_ml3.envs.reacher import ReacherGoalEnv

        kwargs.setdefault("width", FRAME_SIZE)
        kwargs.setdefault("height", FRAME_SIZE)
        if issubclass(env_class(env_id), ReacherGoalEnv):
            kwargs.setdefault("default_camera_config", dict(REACHER_CAMERA))
    return kwargs


def _render(env: gym.Env, env_id: str) -> np.ndarray:
    """One RGB frame, or :class:`RenderUnavailable` with what to install."""
    try:
        frame = env.render()
    except Exception as exc:  # GL errors come as GLFW/EGL/OSMesa/mujoco exceptions of many types
        hint = GL_HINT if _is_mujoco(env_id) else "this env's render() failed"
        raise RenderUnavailable(
            f"rendering {env_id} failed ({type(exc).__name__}: {exc}). {hint}; "
            f"MUJOCO_GL is {os.environ.get('MUJOCO_GL')!r}."
        ) from exc
    frame = None if frame is None else np.asarray(frame)
    if frame is None or frame.ndim != 3 or frame.shape[2] < 3:
        shape = None if frame is None else frame.shape
        raise RenderUnavailable(f"{env_id} gave no RGB frame for render_mode='rgb_array' (got {shape})")
    return frame[..., :3].astype(np.uint8, copy=False)


def _episode_frames(
    policy: Any, env_id: str, goal: np.ndarray, seed: int, vec_normalize: Any, kwargs: dict, max_frames: int
) -> list[tuple[int, int, float, np.ndarray]]:
    """``(step, n_steps, distance, picture)`` of one episode's shown steps (step 0 is the reset)."""
    env = gym.make(env_id, goal=goal, render_mode="rgb_array", **kwargs)
    try:
        n_steps = (env.spec.max_episode_steps if env.spec is not None else None) or NO_TIME_LIMIT_STEPS
        stride = math.ceil((n_steps + 1) / max_frames)
        if stride > 1:  # room for the last step too: steps 0, k, 2k, ... and n_steps
            stride = math.ceil(n_steps / (max_frames - 1))
        obs, info = env.reset(seed=seed)
        shown = [(0, n_steps, float(info["distance"]), _render(env, env_id))]
        for step in range(1, n_steps + 1):
            policy_obs = obs[None]
            if vec_normalize is not None:
                policy_obs = vec_normalize.normalize_obs(policy_obs)
            actions, _ = policy.predict(policy_obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(np.asarray(actions)[0])
            done = terminated or truncated or step == n_steps
            if done or step % stride == 0:
                shown.append((step, n_steps, float(info["distance"]), _render(env, env_id)))
            if done:
                break
    finally:
        env.close()
    return shown


# ---- frames and captions ------------------------------------------------------------


def _resample(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resample to ``size`` x ``size`` (all frames of a clip must match)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    rows = ((np.arange(size) + 0.5) * h / size).astype(int)
    cols = ((np.arange(size) + 0.5) * w / size).astype(int)
    return image[rows][:, cols]


@functools.lru_cache(maxsize=4)
def _glyphs(size: int) -> tuple[dict[str, np.ndarray], int, int]:
    """Coverage masks (0..1) of printable ASCII in DejaVu Sans Mono at ``size`` px, cell width, height."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.transforms import IdentityTransform

    chars = [chr(c) for c in range(32, 127)]
    cell_w, cell_h = math.ceil(0.61 * size), math.ceil(1.25 * size)  # DejaVu Sans Mono advance: 0.602 em
    fig = Figure(figsize=(cell_w * len(chars) / 72, cell_h / 72), dpi=72)  # 72 dpi: points == pixels
    canvas = FigureCanvasAgg(fig)
    font = FontProperties(family="DejaVu Sans Mono", size=size)
    for i, ch in enumerate(chars):  # pixel coordinates, origin bottom left; baseline above the descent
        fig.text(i * cell_w, 0.27 * size, ch, fontproperties=font, transform=IdentityTransform(), color="black")
    canvas.draw()
    gray = np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float32)
    coverage = (1.0 - gray / 255.0)[:cell_h, : cell_w * len(chars)]
    return {ch: coverage[:, i * cell_w : (i + 1) * cell_w] for i, ch in enumerate(chars)}, cell_w, cell_h


def _caption(lines: Sequence[str], width: int, height: int) -> np.ndarray:
    """A light strip with ``lines`` in dark text, each cut to fit (with ``...``)."""
    glyphs, cell_w, cell_h = _glyphs(FONT_SIZE)
    strip = np.full((height, width, 3), 250.0, dtype=np.float32)
    ink = np.array([25.0, 25.0, 25.0], dtype=np.float32)
    max_chars = (width - 8) // cell_w
    y = max(0, (height - cell_h * len(lines)) // 2)
    for line in lines:
        line = "".join(c if c in glyphs else "?" for c in line)
        if len(line) > max_chars:
            line = line[: max_chars - 3] + "..."
        for j, ch in enumerate(line):
            x = 4 + j * cell_w
            cover = glyphs[ch][: max(0, height - y), :, None]
            region = strip[y : y + cover.shape[0], x : x + cell_w]
            region[:] = region * (1.0 - cover) + ink * cover
        y += cell_h
    return strip.astype(np.uint8)


def _compose(picture: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The env picture, resampled to ``FRAME_SIZE``, above its caption strip."""
    return np.concatenate([_resample(picture, FRAME_SIZE), _caption(lines, FRAME_SIZE, CAPTION_HEIGHT)], axis=0)


# ---- writers --------------------------------------------------------------------------


def _write_gif(tmp: str, frames: list[np.ndarray], durations: list[float], fps: float) -> None:
    """An endlessly looping GIF; per-frame durations hold each episode's last frame longer."""
    import imageio.v3 as iio

    # GIF delays are in units of 10 ms (Pillow would truncate); Pillow merges identical consecutive
    # frames, but the captions' step numbers keep every frame of a clip distinct
    delays = [max(10, int(round(ms / 10.0)) * 10) for ms in durations]
    iio.imwrite(tmp, np.stack(frames), extension=".gif", plugin="pillow", duration=delays, loop=0)


def _check_ffmpeg() -> None:
    ok = importlib.util.find_spec("imageio_ffmpeg") is not None
    if ok:
        try:
            import imageio_ffmpeg

            imageio_ffmpeg.get_ffmpeg_exe()
        except Exception:  # no bundled binary and none on PATH
            ok = False
    if not ok:
        raise RuntimeError(
            "writing .mp4 clips needs imageio's ffmpeg writer (`pip install imageio-ffmpeg`), which is "
            "not available here; use a .gif path instead"
        )


def _write_mp4(tmp: str, frames: list[np.ndarray], durations: list[float], fps: float) -> None:
    """H.264 at constant ``fps``; a held frame is repeated for its extra time."""
    import imageio.v2 as iio2

    with iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=16) as writer:
        for frame, ms in zip(frames, durations):
            for _ in range(max(1, round(ms * fps / 1000.0))):
                writer.append_data(frame)


__all__ = ["CAPTION_HEIGHT", "DEFAULT_FPS", "DEFAULT_MAX_FRAMES_PER_GOAL", "FRAME_SIZE", "MAX_GOALS",
           "RenderUnavailable", "check_rendering", "render_policy_clip"]
