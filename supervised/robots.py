"""MuJoCo robots for inverse-dynamics learning (paper Sec. IV.B.2, Fig. 5c-d): models, M(q), trajectories.

Two robots:

* ``"reacher"``: the 2-link arm of ``ReacherGoal`` -- Gymnasium's ``reacher.xml``, loaded from the
  installed gymnasium package (the model ``ReacherEnv`` builds). Its two target slide joints are
  decoupled from the arm (another body, no actuator); only the arm's 2 hinge joints are used.
* ``"sawyer"``: the 7-DOF Rethink Sawyer arm of ``assets/sawyer.xml``, written for this package
  from the link masses, inertias and kinematics of robosuite 1.5.2's ``sawyer/robot.xml`` (itself
  from Rethink's URDF); see the file's header. robosuite itself is not used: installing 1.5.2 would
  downgrade numpy (``pip install --dry-run robosuite==1.5.2`` wants numpy 1.26.4).

Rigid-body dynamics (Eq. 10): ``M(q) q_dd + F(q, q_d) = u``. MuJoCo gives the joint-space inertia
``M(q)`` (:func:`full_inertia`, ``mj_fullM``) and ``F = qfrc_bias - qfrc_passive`` (Coriolis,
centrifugal, gravity, joint damping). Trajectories (:func:`simulate_trajectory`) track a sum of
sinusoids in joint space with an inverse-dynamics feed-forward plus a PD controller; every sample
records ``(q, q_d, q_dd, u, M(q))`` at one simulator step, with ``q_dd`` MuJoCo's acceleration under
the applied torque ``u``, so the samples satisfy Eq. 10 to float64 precision.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def _mujoco() -> Any:
    """Import mujoco, or say how to install it."""
    try:
        return importlib.import_module("mujoco")
    except ImportError as exc:  # mujoco is a core requirement, but a broken install should still say so
        raise ImportError(
            "ml3 inverse-dynamics simulates its robots in MuJoCo, which is not importable here: "
            'install it with `pip install "mujoco>=3.1"` (a requirement of sb3-ml3: `pip install sb3-ml3`).'
        ) from exc


def _reacher_xml() -> str:
    try:
        gym_mujoco = importlib.import_module("gymnasium.envs.mujoco")
    except ImportError as exc:
        raise ImportError(
            "The reacher robot is Gymnasium's reacher.xml, and gymnasium's MuJoCo environments are not "
            'importable here: install them with `pip install "gymnasium[mujoco]>=1.0"` (a requirement of sb3-ml3).'
        ) from exc
    return os.path.join(os.path.dirname(gym_mujoco.__file__), "assets", "reacher.xml")


@dataclass(frozen=True)
class RobotSpec:
    """A robot and how its trajectories are drawn.

    Desired joint trajectories are q_des(t) = q_home + sum_k a_k sin(2 pi f_k t + p_k) with
    ``n_sines`` terms per joint, a_k ~ U[0, amplitude / n_sines], f_k ~ U[frequency_range].
    """

    name: str
    joints: tuple[str, ...]
    q_home: tuple[float, ...]
    amplitude: tuple[float, ...]  # per joint (rad), split over the sines
    frequency_range: tuple[float, float] = (0.1, 0.6)  # Hz
    n_sines: int = 3
    kp: float = 100.0  # PD gains on top of the feed-forward
    kd: float = 20.0
    duration: float = 4.0  # seconds per trajectory
    sample_every: int = 1  # record every n-th simulator step

    @property
    def dof(self) -> int:
        return len(self.joints)


ROBOTS: dict[str, RobotSpec] = {
    "reacher": RobotSpec(
        name="reacher",
        joints=("joint0", "joint1"),
        q_home=(0.0, 0.0),
        amplitude=(2.5, 2.0),  # joint1 is limited to +-3.0
        duration=2.0,  # dt = 0.01: 200 steps
    ),
    "sawyer": RobotSpec(
        name="sawyer",
        joints=tuple(f"right_j{i}" for i in range(7)),
        q_home=(0.0, -0.8, 0.0, 1.6, 0.0, -0.8, 0.0),
        amplitude=(1.2, 0.8, 1.2, 0.8, 1.5, 1.2, 2.0),  # well inside the joint ranges
        duration=4.0,  # dt = 0.002: 2000 steps, every 10th recorded
        sample_every=10,
    ),
}


def check_robot(name: str) -> RobotSpec:
    """The :class:`RobotSpec` of ``name``, or a ValueError listing the known robots."""
    if name not in ROBOTS:
        raise ValueError(f"Unknown robot {name!r}: choose one of {sorted(ROBOTS)}.")
    return ROBOTS[name]


class Robot:
    """A loaded MuJoCo model with the indices of the learned joints."""

    def __init__(self, name: str) -> None:
        self.spec = check_robot(name)
        mujoco = _mujoco()
        path = _reacher_xml() if name == "reacher" else os.path.join(_ASSETS, "sawyer.xml")
        self.model = mujoco.MjModel.from_xml_path(path)
        self.data = mujoco.MjData(self.model)
        ids = [mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in self.spec.joints]
        if min(ids) < 0:
            raise ValueError(f"The model {path} lacks some of the joints {self.spec.joints}.")
        self.qpos_idx = np.array([self.model.jnt_qposadr[i] for i in ids])
        self.dof_idx = np.array([self.model.jnt_dofadr[i] for i in ids])

    @property
    def dof(self) -> int:
        return self.spec.dof

    @property
    def dt(self) -> float:
        return float(self.model.opt.timestep)

    def set_state(self, q: np.ndarray, q_d: np.ndarray | None = None) -> None:
        """Put the learned joints at (q, q_d), every other joint at rest at its reference position."""
        self.data.qpos[:] = self.model.qpos0
        self.data.qvel[:] = 0.0
        self.data.qpos[self.qpos_idx] = q
        if q_d is not None:
            self.data.qvel[self.dof_idx] = q_d

    def inertia(self, q: np.ndarray) -> np.ndarray:
        """M(q) of the learned joints, from mj_fullM; ``q`` of shape (dof,) or (n, dof)."""
        mujoco = _mujoco()
        q = np.asarray(q, dtype=float)
        if q.shape[-1] != self.dof or q.ndim not in (1, 2):
            raise ValueError(f"q must have shape ({self.dof},) or (n, {self.dof}) for {self.spec.name}, got {q.shape}.")
        out = []
        for row in np.atleast_2d(q):
            self.set_state(row)
            mujoco.mj_forward(self.model, self.data)
            out.append(full_inertia(self.model, self.data)[np.ix_(self.dof_idx, self.dof_idx)])
        return out[0] if q.ndim == 1 else np.stack(out)


def full_inertia(model: Any, data: Any) -> np.ndarray:
    """The dense (nv, nv) joint-space inertia matrix of the current state (after mj_forward).

    mujoco >= 4.0 has ``mj_fullM(m, d, dst)`` and no ``MjData.qM``; older releases take
    ``mj_fullM(m, dst, d.qM)``. Both are supported.
    """
    mujoco = _mujoco()
    dense = np.zeros((model.nv, model.nv))
    try:
        mujoco.mj_fullM(model, data, dense)
    except TypeError:
        mujoco.mj_fullM(model, dense, data.qM)
    return dense


def simulate_trajectory(robot: Robot, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Simulate one trajectory of a random sum of sinusoids; returns float64 arrays keyed q, q_d, q_dd, u, M.

    The controller applies u = ID(q_des, q_d_des, q_dd_des) + kp (q_des - q) + kd (q_d_des - q_d)
    as joint torques (``qfrc_applied``), ID being MuJoCo's inverse dynamics; it starts on the
    desired trajectory. Each recorded sample holds the state, the torque applied there, MuJoCo's
    resulting acceleration and M(q).
    """
    mujoco = _mujoco()
    spec, model = robot.spec, robot.model
    n, dt = robot.dof, robot.dt
    steps = int(round(spec.duration / dt))
    amp = rng.uniform(0, 1, (spec.n_sines, n)) * np.asarray(spec.amplitude) / spec.n_sines
    freq = 2 * np.pi * rng.uniform(*spec.frequency_range, (spec.n_sines, n))
    phase = rng.uniform(-np.pi, np.pi, (spec.n_sines, n))
    home = np.asarray(spec.q_home)

    def desired(t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        arg = freq * t + phase
        offset = (amp * np.sin(phase)).sum(0)  # q_des(0) = q_home
        q = home + (amp * np.sin(arg)).sum(0) - offset
        return q, (amp * freq * np.cos(arg)).sum(0), -(amp * freq**2 * np.sin(arg)).sum(0)

    scratch = mujoco.MjData(model)
    data = robot.data
    q0, qd0, _ = desired(0.0)
    robot.set_state(q0, qd0)
    records: dict[str, list[np.ndarray]] = {k: [] for k in ("q", "q_d", "q_dd", "u", "M")}
    for step in range(steps):
        t = step * dt
        q_des, qd_des, qdd_des = desired(t)
        # feed-forward: inverse dynamics of the desired state (other joints as they are)
        scratch.qpos[:], scratch.qvel[:] = data.qpos, data.qvel
        scratch.qpos[robot.qpos_idx], scratch.qvel[robot.dof_idx] = q_des, qd_des
        scratch.qacc[:] = 0.0
        scratch.qacc[robot.dof_idx] = qdd_des
        mujoco.mj_inverse(model, scratch)
        q, qd = data.qpos[robot.qpos_idx], data.qvel[robot.dof_idx]
        u = scratch.qfrc_inverse[robot.dof_idx] + spec.kp * (q_des - q) + spec.kd * (qd_des - qd)
        data.qfrc_applied[:] = 0.0
        data.qfrc_applied[robot.dof_idx] = u
        mujoco.mj_forward(model, data)
        if data.nefc:
            raise RuntimeError(f"{spec.name}: a joint limit became active at t = {t:.3f} s; lower the amplitudes.")
        if step % spec.sample_every == 0:
            records["q"].append(q.copy())
            records["q_d"].append(qd.copy())
            records["q_dd"].append(data.qacc[robot.dof_idx].copy())
            records["u"].append(u.copy())
            records["M"].append(full_inertia(model, data)[np.ix_(robot.dof_idx, robot.dof_idx)])
        mujoco.mj_step(model, data)
    return {k: np.stack(v) for k, v in records.items()}


def simulate_trajectories(name: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` independent trajectories of robot ``name`` drawn from ``seed``."""
    robot = Robot(name)
    rng = np.random.default_rng(seed)
    return [simulate_trajectory(robot, rng) for _ in range(n)]


__all__ = ["RobotSpec", "ROBOTS", "Robot", "check_robot", "full_inertia", "simulate_trajectory", "simulate_trajectories"]
