"""What a comparison reports: curves and METRICS.md numbers from its runs, the table, CSV and figures.

:func:`summarise` turns finished runs into per-architecture curves, the samples-to-X% report
(:func:`sb3_ml3.metrics.compare_curves`, the baseline's plateau as ``m_ref``) and the behaviour of
every algorithm's final policies, and marks a method that is within seed noise of the best constant
action: such a method has learned nothing a constant action does not do.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sb3_ml3.atomic import atomic_write_text
from sb3_ml3.experiments.settings import arch_key
from sb3_ml3.metrics import compare_curves, reference_metric

LABELS = {"ml3": "ML3 (learned loss)", "ppo": "PPO", "trpo": "TRPO"}
COLORS = {"ml3": "tab:blue", "ppo": "tab:orange", "trpo": "tab:green"}
REFERENCE_LABELS = {"zero_action": "zero action", "random": "random actions",
                    "best_constant_action": "best constant action", "oracle": "oracle", "expert": "expert"}
REFERENCE_COLORS = {"zero_action": "0.55", "random": "tab:brown", "best_constant_action": "tab:red",
                    "oracle": "tab:purple", "expert": "tab:purple"}
#: a method whose final metric is within this many standard errors (over seeds) of the best constant
#: action is "no better than a constant action"
NOISE_SE = 2.0
CONSTANT_FLAG = "no better than a constant action"


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(runs: Sequence[Mapping[str, Any]], schedule: Sequence[int], algos: Sequence[str],
              net_archs: Sequence[Sequence[int]], references: Mapping[str, Mapping[str, Any]],
              meta_train_samples: float | None, baseline: str = "ppo") -> tuple[dict, dict, dict]:
    """``(curves, metrics, behaviour)`` from the finished runs (tasks averaged inside a seed).

    Seeds missing for an algorithm (an interrupted comparison) are left out of its curves; an
    algorithm with no finished run is left out altogether.
    """
    curves: dict[str, dict[str, Any]] = {}
    metrics: dict[str, Any] = {}
    behaviour: dict[str, dict[str, Any]] = {}
    constant = references.get("best_constant_action", {}).get("metric")
    for net_arch in net_archs:
        key = arch_key(net_arch)
        per_algo: dict[str, np.ndarray] = {}
        for algo in algos:
            mine = [r for r in runs if r["algo"] == algo and list(r["net_arch"]) == list(net_arch)]
            seeds = sorted({r["seed"] for r in mine})
            if not seeds:
                continue
            per_seed = []
            for seed in seeds:
                per_goal = np.concatenate([np.asarray(r["per_goal"]) for r in mine if r["seed"] == seed], axis=0)
                per_seed.append(per_goal.mean(axis=0))
            per_algo[algo] = np.stack(per_seed)
            name = f"{algo} {key}"
            curves[name] = {"algo": algo, "net_arch": list(net_arch), "seeds": seeds,
                            "per_seed": per_algo[algo].tolist(), "mean": per_algo[algo].mean(axis=0).tolist()}
            finals = np.array([reference_metric(c) for c in per_algo[algo]])
            se = float(finals.std(ddof=1) / np.sqrt(len(finals))) if len(finals) > 1 else 0.0
            entry = {
                "final_metric": float(finals.mean()), "final_metric_se": se, "per_seed_final": finals.tolist(),
                "saturation": _mean([r["behaviour"]["saturation"] for r in mine]),
                "final_distance": _mean([r["behaviour"]["final_distance"] for r in mine]),
                "success_rate": _mean([r["behaviour"]["success_rate"] for r in mine]),
                "n_seeds": len(seeds),
            }
            if constant is not None:
                entry["margin_over_best_constant"] = entry["final_metric"] - float(constant)
                entry["no_better_than_constant"] = bool(entry["final_metric"] - float(constant) <= NOISE_SE * se)
            behaviour[name] = entry
        if baseline in per_algo:
            try:
                metrics[key] = compare_curves(schedule, per_algo, reference=baseline,
                                              candidate="ml3" if "ml3" in per_algo else None,
                                              meta_train_samples=meta_train_samples)
            except ValueError as exc:
                metrics[key] = {"error": str(exc)}
        else:
            metrics[key] = {"note": f"no {baseline.upper()} run: m_ref (the baseline's plateau) is undefined"}
    return curves, metrics, behaviour


def _samples_text(b: Mapping[str, Any]) -> str:
    if b["value"] is None:
        return "n/a"
    if b["kind"] == "lower":
        return f"not reached (>{b['value']:,.0f})"
    return f"{b['value']:,.0f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def reference_lines(references: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The reference policies' rows of the printed table."""
    lines = [f"  {'reference policy':<40}{'metric':>10}{'final dist':>12}{'success':>9}{'on bounds':>11}"]
    for name, ref in references.items():
        label = REFERENCE_LABELS.get(name, name)
        if name == "best_constant_action" and ref.get("action") is not None:
            label += " " + "(" + ", ".join(f"{a:.2g}" for a in ref["action"]) + ")"
        lines.append(f"  {label[:39]:<40}{ref['metric']:>10.4g}{_fmt(ref.get('final_distance'), '.3g'):>12}"
                     f"{_fmt(100 * ref['success_rate'] if ref.get('success_rate') is not None else None, '.0f'):>8}%"
                     f"{_fmt(100 * ref['saturation'] if ref.get('saturation') is not None else None, '.0f'):>10}%")
    return lines


def summary_table(results: Mapping[str, Any]) -> str:
    """The printed table: references, then per architecture the algorithms' final metric, behaviour,
    samples to 50%/80% of the baseline's plateau, the ratio, meta-train samples and break-even."""
    cfg = results["config"]
    lines = []
    if results.get("partial"):
        lines.append(f"PARTIAL RESULTS: {results.get('interrupted', 'interrupted')}")
    lines.append(f"{results['env_id']}: reference policies on the {cfg['n_tasks']} held-out goals")
    lines += reference_lines(results.get("references", {}))
    for key, report in results["metrics"].items():
        lines.append(
            f"{results['env_id']}, policy {key}, {len(cfg['seeds'])} seed(s) x {cfg['n_tasks']} held-out tasks "
            f"({cfg['task_mode']}), {cfg['total_timesteps']:,} env steps per run"
        )
        if "algorithms" not in report or not report["algorithms"]:
            lines.append("  " + report.get("error", report.get("note", "no metrics")))
            continue
        lines.append(f"  m_0 (initial policies) = {report['m_0']:.4g}   m_ref (baseline plateau, mean of last 3) = "
                     f"{report['m_ref']:.4g}" + (f"   NOTE: {report['note']}" if report.get("note") else ""))
        pcts = [f"{round(100 * t)}%" for t in report["thresholds"]]
        lines.append(f"  {'algorithm':<10}{'final':>10}{'+-se':>8}{'progress':>10}{'dist':>8}{'success':>9}"
                     f"{'bounds':>8}" + "".join(f" {'to ' + p:>22}" for p in pcts))
        for algo, a in report["algorithms"].items():
            b = results["behaviour"].get(f"{algo} {key}", {})
            cells = "".join(f" {_samples_text(a['samples_to'][p]):>22}" for p in pcts)
            success = b.get("success_rate")
            bounds = b.get("saturation")
            lines.append(
                f"  {algo:<10}{a['final_metric']:>10.4g}{_fmt(b.get('final_metric_se'), '.2g'):>8}"
                f"{100 * a['final_progress']:>9.0f}%{_fmt(b.get('final_distance'), '.3g'):>8}"
                f"{_fmt(None if success is None else 100 * success, '.0f'):>8}%"
                f"{_fmt(None if bounds is None else 100 * bounds, '.0f'):>7}%{cells}"
                + (f"   <- {CONSTANT_FLAG}" if b.get("no_better_than_constant") else ""))
        if "ratio" in report:
            lines.append(f"  ratio {report['reference'].upper()}/ML3 samples (meta-test only): "
                         + "   ".join(f"{p}: {report['ratio'][p]['text']}" for p in pcts))
            samples = report.get("meta_train_samples")
            lines.append("  meta-train samples: " + ("unknown" if samples is None else f"{samples:,.0f}")
                         + "   break-even (tasks): "
                         + "   ".join(f"{p}: {report['break_even_tasks'][p]['text']}" for p in pcts))
    return "\n".join(lines)


def write_csv(results: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Every curve per goal: one row per (run, goal, evaluation step); written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["env_id", "algo", "net_arch", "seed", "task", "goal", "step", "metric"])
    for run in results["runs"]:
        for goal_index, (goal, values) in enumerate(zip(run["goals"], run["per_goal"])):
            task = run["task"] if run["task"] is not None else goal_index
            for step, value in zip(results["schedule"], values):
                writer.writerow([results["env_id"], run["algo"], arch_key(run["net_arch"]), run["seed"], task,
                                 " ".join(f"{g:.4f}" for g in goal), step, f"{value:.6g}"])
    return atomic_write_text(path, buffer.getvalue())


def _metric_name(env_id: str) -> str:
    from sb3_ml3.evaluation import task_metric_for

    return {"_sum_negative_distance": "sum of -distance", "_sum_progress": "sum of distance progress",
            "_negative_final_distance": "-final distance"}.get(task_metric_for(env_id).__name__, "episode return")


def write_figures(results: Mapping[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """One learning-curve PNG per architecture (references as dotted lines), and with several
    architectures the transfer figure (Fig. 4c-d); returns the paths."""
    from sb3_ml3.plotting import plot_curves

    written = []
    ylabel = f"{_metric_name(results['env_id'])} (mean over {results['config']['n_tasks']} held-out tasks)"
    refs = results.get("references", {})
    hlines = {REFERENCE_LABELS.get(k, k): v["metric"] for k, v in refs.items()}
    hline_colors = {REFERENCE_LABELS.get(k, k): REFERENCE_COLORS.get(k, "0.4") for k in refs}
    archs = results["config"]["net_archs"]
    for net_arch in archs:
        key = arch_key(net_arch)
        selected = {c["algo"]: c for c in results["curves"].values() if c["net_arch"] == list(net_arch)}
        if not selected:
            continue
        report = results["metrics"].get(key, {})
        lines = dict(hlines)
        colors = dict(hline_colors)
        if "m_ref" in report and "m_0" in report:
            lines["80% of the baseline's plateau"] = report["m_0"] + 0.8 * (report["m_ref"] - report["m_0"])
        suffix = "x".join(map(str, net_arch)) or "linear"
        name = "learning_curves.png" if len(archs) == 1 else f"learning_curves_{suffix}.png"
        written.append(plot_curves(
            os.path.join(out_dir, name), results["schedule"], {LABELS[a]: c["per_seed"] for a, c in selected.items()},
            xlabel="env steps at meta-test", ylabel=ylabel, title=f"{results['env_id']}: held-out tasks, policy {key}",
            colors={LABELS[a]: COLORS[a] for a in selected}, hlines=lines, hline_colors=colors,
            band_note="tasks averaged inside a seed",
        ))
    if len(archs) > 1:  # Fig. 4c-d: the same loss on several architectures
        styles = {"ml3": "-", "ppo": "--", "trpo": ":"}
        cmap = ["tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:cyan", "tab:olive"]
        curves, colors, linestyles = {}, {}, {}
        for i, net_arch in enumerate(archs):
            for c in results["curves"].values():
                if c["net_arch"] == list(net_arch) and c["algo"] in ("ml3", "ppo"):
                    label = f"{LABELS[c['algo']].split(' ')[0]} {arch_key(net_arch)}"
                    curves[label] = c["per_seed"]
                    colors[label] = cmap[i % len(cmap)]
                    linestyles[label] = styles[c["algo"]]
        if curves:
            written.append(plot_curves(
                os.path.join(out_dir, "architecture_transfer.png"), results["schedule"], curves,
                xlabel="env steps at meta-test", ylabel=ylabel,
                title=f"{results['env_id']}: one learned loss, several policy architectures",
                colors=colors, linestyles=linestyles, hlines=hlines, hline_colors=hline_colors,
                band_note="tasks averaged inside a seed",
            ))
    return written


__all__ = ["CONSTANT_FLAG", "COLORS", "LABELS", "reference_lines", "summarise", "summary_table", "write_csv",
           "write_figures"]
