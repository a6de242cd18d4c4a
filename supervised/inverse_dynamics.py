"""Shaping a learned loss with a physics prior for inverse dynamics learning (paper Sec. IV.B.2, Fig. 5c-d).

The optimizee f_theta is a DeLaN-style model u = M_theta(q) q_dd + F_theta(q, q_d)
(:mod:`sb3_ml3.supervised.delan`, M_theta positive definite through its Cholesky factor). A task is
a pair of simulated trajectories of one robot (:mod:`sb3_ml3.supervised.robots`): the optimizee
trains on the samples of the first (support) and is measured on the second (query). Meta-train and
meta-test trajectories are drawn from disjoint random streams.

Three ways to train the optimizee are compared at meta-test, from the same initialisations:

* ``ml3_shaped``: SGD on a meta-loss M_phi meta-trained with the **shaping task loss**
  L_T = mean (M_theta'(q) - M(q))^2 on the query samples, M(q) the simulator's inertia (mj_fullM);
* ``ml3_mse``: SGD on a meta-loss meta-trained with the torque MSE task loss;
* ``mse``: plain SGD on the torque MSE.

The meta-loss reads, per sample, the predicted torque, the measured torque and the acceleration:
M_phi(u_pred, u, q_dd) (the paper's M_phi(y, f_theta(x)) plus q_dd). Only torques and the
trajectory enter it, so at meta-test it needs no inertia; q_dd lets it tell the samples where the
inertia term M q_dd dominates the torque from those where F does, which is what the shaping can
exploit. Units: torques are divided by their RMS on the meta-train trajectories, q_d and q_dd by
theirs (one number per robot each, so M stays symmetric positive definite in these units); the
reported error is the torque MSE in these units on the query trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import (BestMetaLoss, Task, init_params, learned_loss_fn, meta_test, meta_train, mse,
                                     stack_params)
from sb3_ml3.supervised.delan import InverseDynamicsNet, inertia_fn
from sb3_ml3.supervised.robots import ROBOTS, check_robot, simulate_trajectories

VARIANTS = ("ml3_shaped", "ml3_mse", "mse")
LABELS = {"ml3_shaped": "ML3, shaped (M_theta - M)^2", "ml3_mse": "ML3, torque MSE task loss", "mse": "SGD on torque MSE"}
COLORS = {"ml3_shaped": "tab:green", "ml3_mse": "tab:blue", "mse": "tab:orange"}


@dataclass
class InverseDynamicsConfig:
    """Settings of the inverse dynamics experiment (the paper gives none; these are ours)."""

    robots: tuple[str, ...] = ("reacher", "sawyer")
    n_outer: int = 1000  # outer iterations per meta-loss
    # alpha: the inner step at meta-train and the SGD step at meta-test, the same for all three variants
    # (the paper's alpha of the sine experiment); SGD on the torque MSE is stable up to ~0.01 here
    inner_lr: float = 1e-3
    meta_lr: float = 3e-3  # eta
    test_steps: int = 100  # N gradient steps at meta-test
    reset_every: int = 100  # M: the optimizee is re-initialised every M inner steps (the meta-test horizon)
    n_train_trajectories: int = 20  # meta-train trajectories, the last 2 * n_val_tasks of them for meta-validation
    # meta-validation tasks (from meta-train trajectories, never the meta-test ones); 0: none. Off by default:
    # with 4 (of 24 trajectories) and keep_best it helped the reacher a little and hurt Sawyer (BENCHMARKS.md)
    n_val_tasks: int = 0
    eval_every: int = 100  # meta-validation interval in outer iterations
    keep_best: bool = False  # meta-test the loss that did best at meta-validation (torque MSE after test_steps)
    n_test_tasks: int = 10  # each uses two held-out trajectories (support, query)
    hidden_sizes: tuple[int, ...] = (32, 32)  # optimizee's two networks
    meta_hidden_sizes: tuple[int, ...] = (40, 40)
    meta_output: str = "softplus"
    meta_inputs: tuple[str, ...] = ("u_pred", "u", "q_dd")
    max_grad_norm: float | None = 10.0
    # the shaped task loss is mean (M_theta' - M)^2 + shaped_torque_weight * torque MSE; 0 is pure shaping
    shaped_torque_weight: float = 1.0
    record_every: int = 10  # meta-train task loss kept every n outer iterations

    def __post_init__(self) -> None:
        self.robots = tuple(self.robots)
        for robot in self.robots:
            check_robot(robot)
        if not self.robots:
            raise ValueError("Give at least one robot, e.g. robots=('reacher', 'sawyer').")
        if self.n_val_tasks < 0 or self.eval_every < 0:
            raise ValueError(f"n_val_tasks and eval_every must be non-negative, got {self.n_val_tasks} and {self.eval_every}.")
        if self.n_train_trajectories - 2 * self.n_val_tasks < 2:
            raise ValueError(
                f"n_train_trajectories={self.n_train_trajectories} leaves fewer than 2 meta-train trajectories beside "
                f"the 2 x {self.n_val_tasks} of meta-validation (a task needs two); raise it or lower n_val_tasks.")
        if self.keep_best and not (self.n_val_tasks and self.eval_every):
            raise ValueError("keep_best needs meta-validation: set n_val_tasks and eval_every > 0, or keep_best=False.")
        if self.n_test_tasks < 1 or self.test_steps < 1 or self.n_outer < 0 or self.reset_every < 1:
            raise ValueError("n_test_tasks, test_steps and reset_every must be positive, n_outer non-negative.")
        unknown = [f for f in self.meta_inputs if f not in _FIELDS]
        if unknown or "u_pred" not in self.meta_inputs:
            raise ValueError(f"meta_inputs must include 'u_pred' and come from {sorted(_FIELDS)}, got {self.meta_inputs}.")


# what the meta-loss can read: (prediction, batch = (x, u, M)) -> field; x = [q, q_d, q_dd]
_FIELDS: dict[str, Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]] = {
    "u_pred": lambda u_pred, batch: u_pred,
    "u": lambda u_pred, batch: batch[1],
    "q": lambda u_pred, batch: batch[0][..., : u_pred.shape[-1]],
    "q_d": lambda u_pred, batch: batch[0][..., u_pred.shape[-1]: 2 * u_pred.shape[-1]],
    "q_dd": lambda u_pred, batch: batch[0][..., 2 * u_pred.shape[-1]:],
}


def meta_inputs_fn(names: Sequence[str]) -> Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    """The ``inputs`` function of :func:`learned_loss_fn`: the named fields of (u_pred, (x, u, M))."""
    getters = [_FIELDS[name] for name in names]
    return lambda prediction, batch: tuple(get(prediction, batch) for get in getters)


@dataclass
class RobotData:
    """One robot's trajectories as tensors ``(x, u, M)`` per trajectory, in normalised units."""

    train: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    test: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    scales: dict[str, float]


def robot_data(robot: str, n_train: int, n_test: int, seed: int) -> RobotData:
    """Simulate disjoint meta-train and meta-test trajectories and normalise them by the meta-train RMS."""
    train_seed, test_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence([seed, 15]).spawn(2))
    train = simulate_trajectories(robot, n_train, train_seed)
    test = simulate_trajectories(robot, n_test, test_seed)

    def rms(key: str) -> float:
        return float(np.sqrt(np.mean(np.concatenate([t[key] for t in train]) ** 2)))

    scales = {"u": rms("u"), "q_d": rms("q_d"), "q_dd": rms("q_dd")}

    def tensors(t: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = np.concatenate([t["q"], t["q_d"] / scales["q_d"], t["q_dd"] / scales["q_dd"]], axis=-1)
        inertia = t["M"] * scales["q_dd"] / scales["u"]  # u/s_u = (M s_qdd / s_u)(q_dd / s_qdd) + F / s_u
        return (torch.tensor(x, dtype=torch.float32), torch.tensor(t["u"] / scales["u"], dtype=torch.float32),
                torch.tensor(inertia, dtype=torch.float32))

    return RobotData([tensors(t) for t in train], [tensors(t) for t in test], scales)


class InverseDynamicsExperiment:
    """Meta-train the two meta-losses per robot and seed, then meta-test all three variants."""

    def __init__(self, config: InverseDynamicsConfig | None = None) -> None:
        self.config = config or InverseDynamicsConfig()
        self.inputs = meta_inputs_fn(self.config.meta_inputs)

    def make_meta_loss(self, robot: str, variant: str, generator: torch.Generator) -> MetaLoss:
        cfg, dof = self.config, ROBOTS[robot].dof
        meta_loss = MetaLoss(
            ", ".join(f"{name}:{dof}" for name in cfg.meta_inputs),
            hidden_sizes=cfg.meta_hidden_sizes,
            output=cfg.meta_output,
            metadata={"experiment": "inverse_dynamics", "robot": robot, "variant": variant,
                      "config": _jsonable(asdict(cfg))},
        )
        meta_loss.reset_parameters(generator)
        return meta_loss

    def run_robot_seed(self, robot: str, seed: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        cfg, dof = self.config, ROBOTS[robot].dof
        data = robot_data(robot, cfg.n_train_trajectories, 2 * cfg.n_test_tasks, seed)
        optimizee = InverseDynamicsNet(dof, cfg.hidden_sizes)
        inertia = inertia_fn(optimizee)
        generator = torch.Generator().manual_seed(seed)

        def torque_mse(params: dict, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return mse(torch.func.functional_call(optimizee, params, (batch[0],)), batch[1])

        def inertia_mse(params: dict, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:  # the shaping loss
            q = batch[0][..., :dof]
            return ((inertia(params, q) - batch[2]) ** 2).mean()

        def shaped_loss(params: dict, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            value = inertia_mse(params, batch)
            if cfg.shaped_torque_weight:
                value = value + cfg.shaped_torque_weight * torque_mse(params, batch)
            return value

        n_fit = len(data.train) - 2 * cfg.n_val_tasks
        fit, val = data.train[:n_fit], data.train[n_fit:]

        def train_task(_: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
            i, j = torch.randperm(len(fit), generator=generator)[:2].tolist()
            return fit[i], fit[j]

        test_tasks = [Task(data.test[2 * k], data.test[2 * k + 1]) for k in range(cfg.n_test_tasks)]
        test_inits = stack_params([init_params(optimizee, generator) for _ in test_tasks])
        val_tasks = [Task(val[2 * k], val[2 * k + 1]) for k in range(cfg.n_val_tasks)]
        val_inits = stack_params([init_params(optimizee, generator) for _ in val_tasks]) if val_tasks else None
        meta_losses, train_curves, skipped, validation = {}, {}, {}, {}
        for variant, task_loss in (("ml3_shaped", shaped_loss), ("ml3_mse", torque_mse)):
            meta_loss = self.make_meta_loss(robot, variant, generator)
            best = BestMetaLoss()

            def evaluate(loss: MetaLoss) -> float:
                """Meta-validation: torque MSE after test_steps SGD steps on the loss, on held-out meta-train tasks."""
                return best.offer(loss, float(meta_test(optimizee, loss, val_tasks, val_inits, cfg.inner_lr,
                                                        cfg.test_steps, metric_fn=torque_mse,
                                                        inputs=self.inputs)[:, -1].mean()))
            result = meta_train(
                meta_loss,
                learned_loss_fn(optimizee, meta_loss, self.inputs),
                task_loss,
                init_fn=lambda g: init_params(optimizee, g),
                task_fn=train_task,
                n_outer=cfg.n_outer,
                inner_lr=cfg.inner_lr,
                meta_lr=cfg.meta_lr,
                generator=generator,
                reset_every=cfg.reset_every,
                max_grad_norm=cfg.max_grad_norm,
                evaluate=evaluate if val_tasks and cfg.eval_every else None,
                eval_every=cfg.eval_every if val_tasks else 0,
                progress=progress,
            )
            if cfg.keep_best:
                best.restore(meta_loss)
            validation[variant] = {"iterations": result.eval_iterations, "error": result.eval_metric,
                                   "best_iteration": best.iteration(result.eval_iterations),
                                   "best_error": best.error if math.isfinite(best.error) else None}
            meta_losses[variant] = meta_loss
            train_curves[variant] = result.task_loss[:: cfg.record_every]
            skipped[variant] = result.skipped_steps

        out: dict[str, Any] = {"robot": robot, "seed": seed, "scales": data.scales}
        for variant in VARIANTS:
            loss = meta_losses.get(variant)
            kwargs = dict(inputs=self.inputs, train_loss_fn=torque_mse)
            torque = meta_test(optimizee, loss, test_tasks, test_inits, cfg.inner_lr, cfg.test_steps,
                               metric_fn=torque_mse, **kwargs)
            inert = meta_test(optimizee, loss, test_tasks, test_inits, cfg.inner_lr, cfg.test_steps,
                              metric_fn=inertia_mse, **kwargs)
            out[f"final_torque_mse_{variant}"] = float(torque[:, -1].mean())
            out[f"final_inertia_mse_{variant}"] = float(inert[:, -1].mean())
            out[f"test_trace_{variant}"] = torque.mean(0).tolist()
            out[f"test_inertia_trace_{variant}"] = inert.mean(0).tolist()
            out[f"test_final_per_task_{variant}"] = torque[:, -1].tolist()
        out["ratio_shaped_over_mse"] = out["final_torque_mse_ml3_shaped"] / out["final_torque_mse_mse"]
        out["meta_train_task_loss"] = train_curves
        out["meta_validation"] = validation
        out["skipped_meta_steps"] = skipped
        out["meta_losses"] = meta_losses
        return out

    def run(self, seeds: Sequence[int], progress: bool = False) -> dict[str, Any]:
        """All robots and seeds; JSON-ready except ``"meta_losses"`` ({(robot, seed, variant): MetaLoss}).

        Ctrl-C keeps the (robot, seed) runs finished before it (``"partial": True``); with none
        finished it re-raises.
        """
        cfg = self.config
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cfg.robots) * len(seeds) * 2 * cfg.n_outer, desc="ml3 inverse-dynamics: meta-train",
                       unit="it")
        per_seed: list[dict[str, Any]] = []
        interrupted_at = None
        try:
            for robot in cfg.robots:
                for seed in seeds:
                    try:
                        per_seed.append(self.run_robot_seed(robot, seed, (lambda _: bar.update(1)) if bar else None))
                    except KeyboardInterrupt:
                        if not per_seed:
                            raise
                        interrupted_at = (robot, seed)
                        break
                if interrupted_at is not None:
                    break
        finally:
            if bar is not None:
                bar.close()
        meta_losses = {}
        for r in per_seed:
            for variant, loss in r.pop("meta_losses").items():
                meta_losses[(r["robot"], r["seed"], variant)] = loss
        results = {"experiment": "inverse_dynamics", "config": _jsonable(asdict(cfg)), "summary": summarise(per_seed),
                   "per_seed": per_seed, "meta_losses": meta_losses, "partial": interrupted_at is not None}
        if interrupted_at is not None:
            results["interrupted_at"] = {"robot": interrupted_at[0], "seed": int(interrupted_at[1])}
            results["requested_seeds"] = list(seeds)
        return results


def summarise(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per robot: mean final torque MSE of each variant over seeds, the ratio shaped / MSE, and the ordering."""
    summary: dict[str, Any] = {}
    for robot in dict.fromkeys(r["robot"] for r in per_seed):
        rows = [r for r in per_seed if r["robot"] == robot]
        means = {v: float(np.mean([r[f"final_torque_mse_{v}"] for r in rows])) for v in VARIANTS}
        summary[robot] = {
            "seeds": [r["seed"] for r in rows],
            **{f"mean_final_torque_mse_{v}": means[v] for v in VARIANTS},
            **{f"mean_final_inertia_mse_{v}": float(np.mean([r[f"final_inertia_mse_{v}"] for r in rows]))
               for v in VARIANTS},
            "ratio_shaped_over_mse": means["ml3_shaped"] / means["mse"],
            "ratio_unshaped_over_mse": means["ml3_mse"] / means["mse"],
            "shaped_lowest": means["ml3_shaped"] == min(means.values()),
            "seeds_shaped_lowest": int(sum(
                r["final_torque_mse_ml3_shaped"] <= min(r[f"final_torque_mse_{v}"] for v in VARIANTS) for r in rows)),
        }
    return summary


def run_inverse_dynamics(seeds: Sequence[int] = (0, 1, 2, 3, 4), config: InverseDynamicsConfig | None = None,
                         progress: bool = False) -> dict[str, Any]:
    """Run the inverse dynamics experiment (see :class:`InverseDynamicsExperiment`)."""
    return InverseDynamicsExperiment(config).run(seeds, progress=progress)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


__all__ = ["InverseDynamicsConfig", "InverseDynamicsExperiment", "run_inverse_dynamics", "robot_data",
           "meta_inputs_fn", "summarise", "VARIANTS"]
