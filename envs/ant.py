"""AntGoal: Gymnasium's MuJoCo Ant-v5 quadruped that has to walk to a goal on a circle.

``AntGoalEnv`` subclasses ``gymnasium.envs.mujoco.ant_v5.AntEnv`` (same model, ``frame_skip=5``,
``dt = 0.05``, same reset noise) and changes

* the **observation**: no contact forces (as in the paper, footnote 4) and the torso's x, y
  kept, then the goal: ``qpos (15: torso x, y, z, quaternion, 8 joint angles), qvel (14), gx, gy``
  = 31 values as float32, ``goal_slice = slice(29, 31)``;
* the **reward** (ML3, Appendix A): ``R = -d + 5 / (d + 0.25) - sum_i |a_i|`` with ``d`` the
  distance from the torso centre to the goal after the step, ``a`` the applied (clipped) action;
* **termination**: off by default (``terminate_when_unhealthy=False``).  The reward is mostly
  negative far from the goal, so ending the episode when the ant flips would reward falling
  over; pass ``terminate_when_unhealthy=True`` for Ant-v5's rule (torso z outside [0.2, 1]).
* **episode length**: 200 steps (10 s) as registered; change it with
  ``gym.make("AntGoal-v0", max_episode_steps=...)``.

The task metric is the sum over an episode's steps of ``initial distance - current distance``
(averaged over tasks); both are in ``info`` (``info["initial_distance"]``, ``info["distance"]``) and their
difference is ``info["progress"]``.

Tasks: goals on the circle of radius ``goal_radius`` (default 2.0) around the start, cut into 8
arcs of 45 degrees; ``"train"`` goals lie on the arcs starting at 0, 90, 180, 270 degrees,
``"test"`` goals on the other four, ``"all"`` anywhere on the circle.  ``set_task`` accepts any
goal on the floor (``|gx|, |gy| <= 40``).

Success (``success_threshold = 0.5``): the torso's centre ends the episode less than 0.5 from the
goal, i.e. the goal lies under the ant's body (the torso's radius is 0.25, its hips sit 0.28 and
its upper legs end 0.57 from the centre in Ant-v5's model); that is a quarter of the default goal
radius (2.0), so an ant that stops halfway never counts, while one that arrives and shuffles about
the goal does.

Rendered frames (``render_mode="rgb_array"``, ``"human"``, ...) show the goal as a red disc on the
floor at ``(gx, gy)``.  It is a render-only marker, added to the scene of Gymnasium's MuJoCo
renderer for each frame: the model, observations, physics and ``step`` are those of Ant-v5.  The
default camera looks at the start from above so that the whole circle of goals is in the frame
(Ant-v5's leaves most of it out); pass ``default_camera_config`` to choose another view.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from .tasks import AnnulusSectors, GoalTaskMixin, alternating_sectors

FLOOR_HALF_SIZE = 40.0
N_ARCS = 8
DEFAULT_GOAL_RADIUS = 2.0
#: the goal marker of rendered frames: a flat red cylinder (a disc) lying on the floor
GOAL_MARKER_RADIUS = 0.25
GOAL_MARKER_HALF_HEIGHT = 0.01
GOAL_MARKER_RGBA = (0.9, 0.05, 0.05, 1.0)
CAMERA_DISTANCE_PER_GOAL_RADIUS = 3.5  # the default camera frames the whole circle of goals


class AntGoalEnv(GoalTaskMixin, AntEnv):
    """MuJoCo Ant walking to a goal on a circle; see the module docstring.

    Args:
        task_split: "train", "test" or "all" (alternating 45-degree arcs).
        goal: pin this goal from the start (same as ``set_task(goal)``).
        goal_radius: radius of the circle of goals around the start.
        terminate_when_unhealthy: end the episode when the torso leaves z in [0.2, 1] (Ant-v5's rule).
        render_mode: None, "rgb_array" (headless GL, see ``sb3_ml3.envs.rendering``), "human", ...;
            frames show the goal as a red disc on the floor.
        **kwargs: passed to Ant-v5's constructor (e.g. ``reset_noise_scale``, ``frame_skip``,
            ``width``, ``height``, ``default_camera_config``: default :meth:`goal_camera_config`);
            ``include_cfrc_ext_in_observation`` and ``exclude_current_positions_from_observation``
            are fixed by this env.
    """

    goal_dim = 2
    goal_slice = slice(29, 31)
    #: an episode succeeds when the torso ends less than this from the goal (module docstring)
    success_threshold = 0.5

    def __init__(
        self,
        task_split: str = "train",
        goal: Any = None,
        goal_radius: float = DEFAULT_GOAL_RADIUS,
        terminate_when_unhealthy: bool = False,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        for fixed in ("include_cfrc_ext_in_observation", "exclude_current_positions_from_observation"):
            if fixed in kwargs:
                raise ValueError(
                    f"AntGoalEnv fixes {fixed} (the observation layout and goal_slice depend on it); remove it."
                )
        AntEnv.__init__(
            self,
            terminate_when_unhealthy=terminate_when_unhealthy,
            include_cfrc_ext_in_observation=False,
            exclude_current_positions_from_observation=False,
            render_mode=render_mode,
            **kwargs,
        )
        utils.EzPickle.__init__(
            self,
            task_split=task_split,
            goal=goal,
            goal_radius=goal_radius,
            terminate_when_unhealthy=terminate_when_unhealthy,
            render_mode=render_mode,
            **kwargs,
        )
        n = self.data.qpos.size + self.data.qvel.size
        self.goal_slice = slice(n, n + 2)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(n + 2,), dtype=np.float32)
        self.goal_radius = float(goal_radius)
        self._init_tasks(task_split, goal, goal_radius=self.goal_radius)
        self._initial_distance = float("nan")
        if "default_camera_config" not in kwargs:
            # Ant-v5's camera (4 m from the start) leaves most goals of the circle out of the frame
            self.mujoco_renderer.default_cam_config = self.goal_camera_config(self.goal_radius)

    @classmethod
    def build_task_regions(cls, goal_radius: float = DEFAULT_GOAL_RADIUS) -> dict[str, AnnulusSectors]:
        if not (np.isfinite(goal_radius) and 0 < goal_radius <= FLOOR_HALF_SIZE):
            raise ValueError(
                f"goal_radius must be in (0, {FLOOR_HALF_SIZE}] (the floor's half-size); got {goal_radius!r}"
            )
        r = float(goal_radius)
        return {
            "train": AnnulusSectors(r, r, alternating_sectors(N_ARCS, 0)),
            "test": AnnulusSectors(r, r, alternating_sectors(N_ARCS, 1)),
            "all": AnnulusSectors(r, r, [(0.0, 2 * np.pi)]),
        }

    def _check_goal_feasible(self, goal: np.ndarray) -> None:
        if np.any(np.abs(goal) > FLOOR_HALF_SIZE):
            raise ValueError(
                f"goal {goal.tolist()} is off AntGoal's floor [-{FLOOR_HALF_SIZE}, {FLOOR_HALF_SIZE}]^2; "
                f"pick a goal on it (the splits use goals at distance {self.goal_radius} from the start)."
            )

    # ---- simulation --------------------------------------------------------------
    def _distance(self) -> float:
        q = self.data.qpos
        return float(np.hypot(q[0] - self._goal[0], q[1] - self._goal[1]))

    def reset_model(self) -> np.ndarray:
        self._next_goal()
        AntEnv.reset_model(self)
        self._initial_distance = self._distance()
        return self._get_obs()

    def _get_obs(self) -> np.ndarray:
        return np.concatenate((self.data.qpos, self.data.qvel, self._goal)).astype(np.float32)

    def _get_reset_info(self) -> dict[str, Any]:
        return self._info(self._distance())

    def step(self, action):
        a = self._check_action(action)
        self.do_simulation(a, self.frame_skip)
        d = self._distance()
        reward_ctrl = -float(np.abs(a).sum())
        reward = -d + 5.0 / (d + 0.25) + reward_ctrl
        terminated = bool(self._terminate_when_unhealthy and not self.is_healthy)
        info = self._info(d)
        info["reward_dist"] = -d
        info["reward_near"] = 5.0 / (d + 0.25)
        info["reward_ctrl"] = reward_ctrl
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, terminated, False, info

    # ---- rendering ---------------------------------------------------------------
    @staticmethod
    def goal_camera_config(goal_radius: float) -> dict[str, Any]:
        """The default camera: looking at the start from above (60 degrees), the goal circle in view."""
        return {
            "distance": max(4.0, CAMERA_DISTANCE_PER_GOAL_RADIUS * goal_radius),
            "elevation": -60.0,
            "lookat": np.zeros(3),
        }

    def render(self):
        """Ant-v5's frame with the goal drawn as a red disc on the floor at ``(gx, gy)``.

        Gymnasium's MuJoCo viewers draw the markers queued with ``add_marker`` on top of the
        model's geoms for one frame and then forget them, so the marker is queued before every
        frame; it exists only in the rendered scene, not in the model.
        """
        if self.render_mode in self.metadata["render_modes"]:
            # the viewer the renderer is about to use (made on the first frame); no reference is
            # kept: a closed viewer must be freed when the renderer drops it
            self.mujoco_renderer._get_viewer(self.render_mode).add_marker(**self._goal_marker())
        return super().render()

    def _goal_marker(self) -> dict[str, Any]:
        """``add_marker`` arguments of the goal's disc: a thin cylinder standing on the floor."""
        return {
            "type": mujoco.mjtGeom.mjGEOM_CYLINDER,
            "size": np.array([GOAL_MARKER_RADIUS, GOAL_MARKER_HALF_HEIGHT, 0.0]),
            "pos": np.array([self._goal[0], self._goal[1], GOAL_MARKER_HALF_HEIGHT]),
            "rgba": np.array(GOAL_MARKER_RGBA),
        }

    def _info(self, distance: float) -> dict[str, Any]:
        info = self._task_info()
        info["distance"] = distance
        info["initial_distance"] = self._initial_distance
        info["progress"] = self._initial_distance - distance
        info["x_position"] = float(self.data.qpos[0])
        info["y_position"] = float(self.data.qpos[1])
        return info
