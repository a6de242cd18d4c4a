"""Figures people look at: learning curves with a band over seeds (mean +/- one standard error)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from sb3_ml3.atomic import atomic_path

ML3_COLOR = "tab:blue"
BASELINE_COLOR = "tab:orange"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def mean_and_stderr(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds and its standard error (zero for a single seed), per x position."""
    data = np.asarray(curves, dtype=float)
    mean = data.mean(axis=0)
    if data.shape[0] < 2:
        return mean, np.zeros_like(mean)
    return mean, data.std(axis=0, ddof=1) / np.sqrt(data.shape[0])


def plot_curves(
    path: str | os.PathLike,
    x: Sequence[float],
    curves: Mapping[str, Sequence[Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    colors: Mapping[str, str] | None = None,
    logy: bool = False,
    linestyles: Mapping[str, str] | None = None,
    hlines: Mapping[str, float] | None = None,
    band_note: str = "",
    hline_colors: Mapping[str, str] | None = None,
) -> str:
    """One line per label with a mean +/- standard-error band over the given seed curves; saves a PNG.

    ``hlines`` draws dotted reference levels (e.g. the reference policies of METRICS.md, 80% of the
    baseline's progress), coloured by ``hline_colors`` (grey by default); ``band_note`` is appended to
    the title's description of the band (e.g. "tasks averaged inside a seed"). Written atomically.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    n_seeds = 0
    for label, seed_curves in curves.items():
        mean, err = mean_and_stderr(seed_curves)
        n_seeds = max(n_seeds, len(seed_curves))
        color = (colors or {}).get(label)
        ax.plot(x, mean, label=label, color=color, linestyle=(linestyles or {}).get(label, "-"))
        ax.fill_between(x, mean - err, mean + err, alpha=0.25, color=color, linewidth=0)
    for label, level in (hlines or {}).items():
        ax.axhline(level, color=(hline_colors or {}).get(label, "0.4"), linestyle=":", linewidth=1.2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel, fontsize=9)
    note = f", {band_note}" if band_note else ""
    ax.set_title(f"{title}\n(mean ± s.e. over {n_seeds} seeds{note})", fontsize=9)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.fspath(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def plot_sine(results: Mapping, out_dir: str | os.PathLike) -> list[str]:
    """Fig. 2 (top): (c) meta-train curve vs SGD on MSE, (d) meta-test curves on the test tasks."""
    per_seed = results["per_seed"]
    os.makedirs(out_dir, exist_ok=True)
    iterations = per_seed[0]["meta_train_iterations"]
    metric = "held-out" if results["config"]["evaluate_on"] == "query" else "training-point"
    steps = results["config"]["test_steps"]
    meta_train = plot_curves(
        os.path.join(out_dir, "sine_meta_train.png"),
        iterations,
        {
            "ML3 (learned loss)": [r["meta_train_metric_ml3"] for r in per_seed],
            "SGD on MSE": [[r["meta_train_metric_task_loss"]] * len(iterations) for r in per_seed],
        },
        xlabel="outer (meta-train) iteration",
        ylabel=f"{metric} MSE after {steps} steps",
        title="Sine: meta-train task",
        colors={"ML3 (learned loss)": ML3_COLOR, "SGD on MSE": BASELINE_COLOR},
        logy=True,
    )
    meta_test = plot_curves(
        os.path.join(out_dir, "sine_meta_test.png"),
        list(range(steps + 1)),
        {
            "ML3 (learned loss)": [r["test_trace_ml3"] for r in per_seed],
            "SGD on MSE": [r["test_trace_task_loss"] for r in per_seed],
        },
        xlabel="gradient step at meta-test",
        ylabel=f"{metric} MSE (mean over {results['config']['n_test_tasks']} test tasks)",
        title="Sine: meta-test tasks",
        colors={"ML3 (learned loss)": ML3_COLOR, "SGD on MSE": BASELINE_COLOR},
    )
    return [meta_train, meta_test]
