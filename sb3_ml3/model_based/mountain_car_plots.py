"""Figures of ``ml3 mountain-car``: Fig. 6b (final distance over policy updates), Fig. 6a (trajectories), a GIF."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sb3_ml3.atomic import atomic_path
from sb3_ml3.model_based.mountain_car_experiment import METHODS
from sb3_ml3.plotting import _pyplot, mean_and_stderr


def _labels():
    from sb3_ml3.model_based.mountain_car_cli import COLORS, LABELS

    return LABELS, COLORS


def plot_updates(results: dict[str, Any], out_dir: str) -> str:
    """Fig. 6b: mean final distance over policy updates, train and unseen starts, mean +- s.e. over seeds."""
    labels, colors = _labels()
    cfg, rows = results["config"], results["per_seed"]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=110, sharey=True)
    for ax, split in zip(axes, ("train", "test")):
        for method in METHODS:
            mean, err = mean_and_stderr([r[f"curve_{split}_{method}"] for r in rows])
            x = np.arange(len(mean))
            ax.plot(x, mean, label=labels[method], color=colors[method], marker="o" if len(x) <= 12 else None, ms=3)
            ax.fill_between(x, mean - err, mean + err, color=colors[method], alpha=0.2, linewidth=0)
        ax.axhline(cfg["success_threshold"], color="0.4", linestyle=":", label=f"success {cfg['success_threshold']}")
        ax.axvline(cfg["test_updates"], color="0.7", linestyle="--", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("policy updates (iLQR: iterations)")
        ax.set_title(f"{'train' if split == 'train' else 'unseen'} start states", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("|x_T - goal| (mean over start states)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"MountainCarGoal, horizon {cfg['horizon']}: meta-test (mean ± s.e. over {len(rows)} seeds)", fontsize=9)
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "mountain_car_updates.png"), plt)


def plot_trajectories(results: dict[str, Any], out_dir: str) -> str:
    """Fig. 6a: x_t of each method's final policy (after its updates) from every start, first seed."""
    labels, colors = _labels()
    cfg, row = results["config"], results["per_seed"][0]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=110, sharey=True)
    for ax, split in zip(axes, ("train", "test")):
        for method in METHODS:
            for i, path in enumerate(row[f"trajectory_{split}_{method}"]):
                ax.plot(path, color=colors[method], linewidth=1.0, alpha=0.8, label=labels[method] if i == 0 else None)
        ax.axhline(cfg["goal"], color="k", linewidth=0.8)
        ax.plot([0, cfg["intermediate_steps"]], [cfg["intermediate_goal"]] * 2, color="k", linestyle=":",
                label="intermediate goal (meta-train only)")
        ax.set_xlabel("time step")
        ax.set_title(f"{'train' if split == 'train' else 'unseen'} starts, seed {row['seed']}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("car position x")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "mountain_car_trajectories.png"), plt)


def write_clip(results: dict[str, Any], out_dir: str) -> str:
    """A GIF of the car on the hill h(x) = 0.45 sin(3x), first seed, first train start: shaped and unshaped ML3 at
    their best update within test_updates (after the last one in older results) and iLQR."""
    import imageio.v2 as imageio

    labels, colors = _labels()
    cfg, row = results["config"], results["per_seed"][0]
    paths = {m: np.asarray(row.get(f"trajectory_best_train_{m}", row[f"trajectory_train_{m}"])[0])
             for m in ("ml3_shaped", "ml3_unshaped")}
    paths["ilqr"] = np.asarray(row["trajectory_train_ilqr"][0])
    plt = _pyplot()
    xs = np.linspace(-1.2, 0.5, 200)
    frames = []
    for t in range(cfg["horizon"] + 1):
        fig, ax = plt.subplots(figsize=(4.0, 2.6), dpi=80)
        ax.plot(xs, 0.45 * np.sin(3 * xs), color="0.3")
        ax.plot([cfg["goal"]], [0.45 * np.sin(3 * cfg["goal"]) + 0.08], marker="v", color="k")
        for method, path in paths.items():
            ax.plot([path[t]], [0.45 * np.sin(3 * path[t]) + 0.04], "o", ms=9, color=colors[method], label=labels[method])
        ax.set_title(f"t = {t}", fontsize=8)
        ax.set_xlim(-1.25, 0.6)
        ax.set_ylim(-0.6, 0.7)
        ax.legend(fontsize=6, loc="upper left")
        ax.axis("off")
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        plt.close(fig)
    path = os.path.join(out_dir, "mountain_car_clip.gif")
    with atomic_path(path, suffix=".gif") as tmp:
        imageio.mimsave(tmp, frames, duration=0.1, loop=0)
    return path


def plot_best_trajectories(results: dict[str, Any], out_dir: str) -> str:
    """x_t of ML3's policies at their best update within ``test_updates`` (per start), every seed: where the
    shaped and the unshaped loss take the car when they are closest to the goal."""
    labels, colors = _labels()
    cfg, rows = results["config"], results["per_seed"]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=110, sharey=True)
    for ax, split in zip(axes, ("train", "test")):
        for method in ("ml3_shaped", "ml3_unshaped"):
            first = True
            for row in rows:
                for path in row.get(f"trajectory_best_{split}_{method}", []):
                    ax.plot(path, color=colors[method], linewidth=0.9, alpha=0.6, label=labels[method] if first else None)
                    first = False
        ax.axhline(cfg["goal"], color="k", linewidth=0.8)
        ax.plot([0, cfg["intermediate_steps"]], [cfg["intermediate_goal"]] * 2, color="k", linestyle=":",
                label="intermediate goal (meta-train only)")
        ax.set_xlabel("time step")
        ax.set_title(f"{'train' if split == 'train' else 'unseen'} starts, best of updates 1-{cfg['test_updates']}, "
                     f"{len(rows)} seeds", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("car position x")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "mountain_car_trajectories_best.png"), plt)


def plot_all(results: dict[str, Any], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    return [plot_updates(results, out_dir), plot_trajectories(results, out_dir), plot_best_trajectories(results, out_dir),
            write_clip(results, out_dir)]


def _save(fig: Any, path: str, plt: Any) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
