"""The table and figures of ``ml3 reacher-experts``: Fig. 6c (targets) and Fig. 6d (reaching over updates).

Every figure and table carries the reference policies of METRICS.md (zero action, random, best
constant action, the expert as the oracle) and the tuned PPO's cited numbers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from sb3_ml3.atomic import atomic_path

REFERENCE_ROWS = (("zero_action", "zero action"), ("random", "uniform random actions"),
                  ("best_constant_action", "best constant action (chosen on these goals)"))


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "never" if x is None else format(x, spec)


def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def _reference_means(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for key, _ in REFERENCE_ROWS:
        found = [r["references"][key] for r in per_seed if "references" in r]
        if found:
            rows[key] = {k: float(np.mean([f[k] for f in found])) for k in ("final_distance", "success_rate", "metric")}
    return rows


def format_table(results: dict[str, Any]) -> str:
    """Held-out targets: final distance, success, metric per method (means +- s.e. over seeds), then per seed."""
    cfg, rows, s = results["config"], results["per_seed"], results["summary"]
    threshold = cfg["success_threshold"]
    labels = rows[0].get("expert_labels", {})  # results written before these settings existed lack them
    lines = [f"ReacherGoal-v0, {len(rows)} seed(s) x {cfg['n_test_goals']} held-out targets; success: final distance "
             f"< {threshold}; metric: sum over the episode of -distance",
             f"setting: features {cfg.get('features', 'obs')}, demonstrations from {cfg.get('demo_starts', 'env')} "
             f"starts ({cfg['n_demos']} per target), meta-training rollouts from {cfg.get('rollout_starts', 'env')} "
             f"starts, task loss on the {cfg.get('task_states', 'demos')} states; expert labels seen: BC "
             f"{labels.get('bc', 'n/a')}, ML3 {labels.get('ml3', 'n/a')}",
             f"  {'policy':<62} {'final dist':>16} {'success':>8} {'metric':>8}  updates"]

    def line(name: str, dist: str, success: float, metric: float, note: str = "") -> None:
        lines.append(f"  {name:<62} {dist:>16} {success:>7.0%} {metric:>8.2f}  {note}")

    for key, label in REFERENCE_ROWS:
        ref = _reference_means(rows).get(key)
        if ref:
            line(label + " (floor)", f"{ref['final_distance']:.4f}", ref["success_rate"], ref["metric"])
    expert = [r["expert"]["test"] for r in rows]
    line("expert = oracle (analytic IK + joint PD)", f"{np.mean([e['final_distance'] for e in expert]):.2g}",
         float(np.mean([e["success_rate"] for e in expert])), float(np.mean([e["metric"] for e in expert])))
    ppo = results["ppo_reference"]
    line("tuned PPO [64, 64] (cited, goal-conditioned, 300k env steps)", f"{ppo['final_distance']:.4f}",
         ppo["success_rate"], ppo["metric"], f"{ppo['env_steps']:,} env steps")
    d, sr, m = (_mean_se([r[k] for r in rows]) for k in ("bc_test_best_final_distance", "bc_test_best_success_rate",
                                                        "bc_test_best_metric"))
    line("behavioural cloning on the demonstrations, at its best step", f"{d[0]:.4f} +- {d[1]:.4f}", sr[0], m[0],
         f"best at Adam step {s['bc_mean_curve_best_step']} (mean curve); <= {threshold} at step "
         f"{_fmt(s.get('bc_mean_curve_steps_to_threshold'), '.0f')}")
    d, sr, m = (_mean_se([r[k] for r in rows]) for k in ("ml3_test_final_distance", "ml3_test_success_rate",
                                                        "ml3_test_metric"))
    reached = s["ml3_mean_curve_updates_to_threshold"]
    line(f"ML3 shaped by demonstrations, after {cfg['test_updates']} updates", f"{d[0]:.4f} +- {d[1]:.4f}", sr[0],
         m[0], f"mean curve <= {threshold} at update {_fmt(reached, '.0f')}; <= BC's best at "
         f"{_fmt(s['ml3_updates_to_bc_best'], '.0f')}")
    lines.append(f"  goal (ML3 reaches {threshold} in fewer updates than BC needs for its best): "
                 f"{'met' if s['goal_met'] else 'NOT met'}")
    lines.append("  per seed: ML3 final dist (success, updates to threshold) | BC best dist (step) | ML3 on train targets"
                 " | BC on train targets (best)")
    for r in rows:
        lines.append(f"    seed {r['seed']}: {r['ml3_test_final_distance']:.4f} ({r['ml3_test_success_rate']:.0%}, "
                     f"{_fmt(r['ml3_test_updates_to_threshold'], '.0f')}) | {r['bc_test_best_final_distance']:.4f} "
                     f"({r['bc_test_best_step']}) | {r['ml3_train_final_distance']:.4f} | "
                     f"{r['bc_train_best_final_distance']:.4f}   [{r['wall_s']:.0f} s]")
    return "\n".join(lines)


def _save(fig: Any, path: str, plt: Any) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def plot_targets(results: dict[str, Any], path: str) -> str:
    """Fig. 6c: the training targets with their expert fingertip paths and the held-out targets, first seed."""
    from sb3_ml3.plotting import _pyplot

    plt = _pyplot()
    row = results["per_seed"][0]
    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=120)
    angles = np.linspace(0, 2 * np.pi, 200)
    for radius, style in ((0.05, ":"), (0.20, ":"), (0.21, "-")):
        ax.plot(radius * np.cos(angles), radius * np.sin(angles), color="0.6", linestyle=style, linewidth=0.8)
    for k in range(8):
        a = k * np.pi / 4
        ax.plot([0.05 * np.cos(a), 0.2 * np.cos(a)], [0.05 * np.sin(a), 0.2 * np.sin(a)], color="0.85", linewidth=0.8)
    for path_xy in row["demo_fingertips"]:
        p = np.asarray(path_xy)
        ax.plot(p[:, 0], p[:, 1], color="tab:blue", linewidth=0.7, alpha=0.6)
    train, test = np.asarray(row["train_goals"]), np.asarray(row["test_goals"])
    ax.scatter(train[:, 0], train[:, 1], color="tab:blue", s=40, label="training targets (with demonstrations)", zorder=3)
    ax.scatter(test[:, 0], test[:, 1], color="tab:orange", s=40, label="meta-test targets (no demonstrations)", zorder=3)
    ax.scatter([0], [0], color="k", marker="+", label="arm base")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(f"ReacherGoal-v0 targets in end-effector space (seed {row['seed']})\n"
                 "lines: expert fingertip paths; grey: train/test sectors", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_reaching(results: dict[str, Any], path: str, split: str = "test") -> str:
    """Fig. 6d: mean final distance on the targets over updates, ML3 vs BC, with references (log scales)."""
    from sb3_ml3.plotting import _pyplot

    plt = _pyplot()
    rows, cfg = results["per_seed"], results["config"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    curves = {
        "ML3 shaped by demonstrations (update = 1 rollout + 1 step on M_phi)":
            (np.arange(cfg["test_updates"] + 1), [np.mean(r["ml3"][split]["final_distance"], 0) for r in rows],
             "tab:green"),
        "behavioural cloning on the same demonstrations (update = 1 Adam step)":
            (np.asarray(rows[0]["bc_steps"]), [np.mean(r["bc"][split]["final_distance"], 0) for r in rows], "tab:purple"),
    }
    for label, (x, seed_curves, color) in curves.items():
        a = np.asarray(seed_curves)
        mean = a.mean(0)
        se = a.std(0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.zeros_like(mean)
        ax.plot(x + 1, mean, color=color, label=label)
        ax.fill_between(x + 1, np.maximum(mean - se, 1e-6), mean + se, color=color, alpha=0.25, linewidth=0)
    levels = {label: ref["final_distance"] for (key, label), ref in
              ((kl, _reference_means(rows).get(kl[0])) for kl in REFERENCE_ROWS) if ref}
    levels["tuned PPO, 300k env steps (cited)"] = results["ppo_reference"]["final_distance"]
    greys = ["0.3", "0.5", "0.7", "tab:red"]
    for (label, level), color in zip(levels.items(), greys):
        ax.axhline(level, color=color, linestyle=":", linewidth=1.2, label=label)
    ax.axhline(cfg["success_threshold"], color="k", linestyle="--", linewidth=1.0,
               label=f"success threshold {cfg['success_threshold']} (the expert: ~1e-8)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("updates + 1")
    ax.set_ylabel(f"final fingertip distance, mean over {split} targets", fontsize=9)
    ax.set_title(f"ReacherGoal-v0, {'held-out' if split == 'test' else 'training'} targets "
                 f"(mean ± s.e. over {len(rows)} seeds)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_reacher_experts(results: dict[str, Any], out_dir: str) -> list[str]:
    """All figures into ``out_dir``: targets (6c), reaching on held-out (6d) and on training targets."""
    os.makedirs(out_dir, exist_ok=True)
    return [plot_targets(results, os.path.join(out_dir, "fig6c_targets.png")),
            plot_reaching(results, os.path.join(out_dir, "fig6d_test_targets.png"), "test"),
            plot_reaching(results, os.path.join(out_dir, "train_targets.png"), "train")]


__all__ = ["format_table", "plot_reacher_experts", "plot_targets", "plot_reaching"]
