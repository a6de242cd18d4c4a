"""Headless rendering: the MuJoCo GL backend choice and a tiny numpy canvas.

MuJoCo envs (ReacherGoal, ReacherGoal4D, AntGoal) render ``render_mode="rgb_array"`` through
Gymnasium's MuJoCo renderer, which picks its OpenGL backend from the ``MUJOCO_GL``
environment variable and defaults to GLFW, which needs a display.  So that rendering works on a headless
machine, importing ``sb3_ml3.envs`` calls :func:`configure_headless_gl`, which -- only when
``MUJOCO_GL`` is unset, the platform is Linux and there is no ``DISPLAY``/``WAYLAND_DISPLAY`` --
sets ``MUJOCO_GL=egl`` if ``libEGL`` can be found, else ``MUJOCO_GL=osmesa`` if ``libOSMesa`` can
(``apt-get install libegl1`` or ``libosmesa6``), provided PyOpenGL is installed (MuJoCo loads the
backend through it as soon as ``mujoco`` is imported, so a backend whose library is missing would
break ``import mujoco`` itself -- which is also what happens if you set such a value yourself).
A value you set yourself is never changed, and nothing is set when neither library exists:
rendering MuJoCo envs then fails with Gymnasium's own error, while stepping them works as usual.

PointmassGoal and MountainCarGoal draw their frames with plain numpy (:class:`Canvas`) and need
no GL at all.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys

import numpy as np


def configure_headless_gl() -> str | None:
    """Choose a headless MuJoCo GL backend when none is set and no display exists.

    Returns the value of ``MUJOCO_GL`` afterwards (None if still unset).
    """
    current = os.environ.get("MUJOCO_GL")
    if current:
        return current
    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    # MuJoCo imports the chosen backend through PyOpenGL when it is imported itself, so choose
    # one only if both PyOpenGL and the backend's library are there (else importing mujoco fails).
    if importlib.util.find_spec("OpenGL") is None:
        return None
    for backend, lib in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(lib):
            os.environ["MUJOCO_GL"] = backend
            return backend
    return None


class Canvas:
    """An RGB image with world coordinates: enough to draw discs, polylines and rectangles."""

    def __init__(
        self, size: int, xlim: tuple[float, float], ylim: tuple[float, float], background=(245, 245, 245)
    ) -> None:
        self.size = int(size)
        self.xlim, self.ylim = xlim, ylim
        self.image = np.empty((self.size, self.size, 3), dtype=np.uint8)
        self.image[:] = np.asarray(background, dtype=np.uint8)
        centers = (np.arange(self.size) + 0.5) / self.size
        self._xs = xlim[0] + centers * (xlim[1] - xlim[0])  # column -> x
        self._ys = ylim[1] - centers * (ylim[1] - ylim[0])  # row -> y (y up)

    def _px(self, length: float) -> float:
        return length / (self.xlim[1] - self.xlim[0]) * self.size

    def fill_where(self, mask: np.ndarray, color) -> None:
        self.image[mask] = np.asarray(color, dtype=np.uint8)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates (X, Y) of every pixel centre, each of shape (size, size)."""
        return np.meshgrid(self._xs, self._ys)

    def disc(self, center, radius: float, color) -> None:
        cx, cy = float(center[0]), float(center[1])
        r = max(radius, 0.75 * (self.xlim[1] - self.xlim[0]) / self.size)
        cols = np.nonzero(np.abs(self._xs - cx) <= r)[0]
        rows = np.nonzero(np.abs(self._ys - cy) <= r)[0]
        if cols.size == 0 or rows.size == 0:
            return
        X, Y = np.meshgrid(self._xs[cols], self._ys[rows])
        mask = (X - cx) ** 2 + (Y - cy) ** 2 <= r * r
        sub = self.image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        sub[mask] = np.asarray(color, dtype=np.uint8)

    def polyline(self, xs: np.ndarray, ys: np.ndarray, width: float, color) -> None:
        """Draw a polyline as discs along densely resampled points (fine for small images)."""
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        seg = np.hypot(np.diff(xs), np.diff(ys))
        n = max(2, int(self._px(seg.sum()) * 2))
        t = np.linspace(0.0, 1.0, n)
        s = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-12)
        for x, y in zip(np.interp(t, s, xs), np.interp(t, s, ys)):
            self.disc((x, y), width / 2, color)
