"""Samples to X% of task performance, the headline ratio and the break-even (METRICS.md, exactly).

Task metrics can be negative, so "80% of performance" is 80% of the way from where training starts
to where the reference ends:

- ``m_0``: the metric of the initial policies (before any update), mean over seeds and tasks;
  every algorithm starts from the same initial policies per seed, so any algorithm's step-0 value
  serves (:func:`initial_metric` averages the step-0 points of the curves it is given);
- ``m_ref``: PPO's final metric at the full budget, the mean of its last 3 evaluations, mean over
  seeds and tasks (:func:`reference_metric`);
- ``progress(t) = (m(t) - m_0) / (m_ref - m_0)`` with ``m(t)`` the mean curve over seeds and tasks;
- samples-to-X%: the first environment step at which progress reaches X, interpolated linearly
  between evaluation points; ``None`` ("not reached") if the curve never gets there within its
  budget (:func:`samples_to_fraction`);
- the headline ratio is PPO's samples-to-80% over ML3's, **meta-test** samples only; where one of
  them is not reached it is reported as a bound (:func:`samples_ratio`);
- break-even: the number of meta-test tasks from which ML3's total cost (its meta-train samples
  plus its meta-test samples per task) is below PPO trained from scratch on each task
  (:func:`break_even_tasks`).

Every function works on plain sequences, so the definitions can be checked on hand-made curves.
Quantities that may be bounds are :class:`Bounded` values: ``value`` with ``kind`` ``"exact"``,
``"upper"`` (the true value is at most ``value``), ``"lower"`` (at least ``value``), ``"never"``
(break-even only: ML3 never pays off) or ``"undefined"`` (``value`` is ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: the thresholds every report gives (METRICS.md / FINDINGS: 50% and 80%)
THRESHOLDS: tuple[float, ...] = (0.5, 0.8)
#: how many final evaluations make PPO's reference metric m_ref
N_FINAL_EVALUATIONS = 3

BOUND_KINDS = ("exact", "upper", "lower", "never", "undefined")


@dataclass(frozen=True)
class Bounded:
    """A number that may only be known as a bound: ``kind`` in :data:`BOUND_KINDS`."""

    value: float | None
    kind: str = "exact"
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in BOUND_KINDS:
            raise ValueError(f"kind must be one of {BOUND_KINDS}, got {self.kind!r}.")
        no_value = self.kind in ("never", "undefined")
        if (self.value is None) != no_value:
            raise ValueError(f"A {self.kind!r} value must {'' if no_value else 'not '}be None.")

    def text(self, fmt: str = "{:.3g}") -> str:
        """``"4.2"``, ``"<= 0.7"``, ``">= 12"``, ``"never"`` or ``"n/a"``."""
        if self.kind == "never":
            return "never"
        if self.value is None:
            return "n/a"
        prefix = {"exact": "", "upper": "<= ", "lower": ">= "}[self.kind]
        return prefix + fmt.format(self.value)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["text"] = self.text()
        return out


# ---------------------------------------------------------------------------------------- curves
def _as_curve(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 1:
        raise ValueError(f"A curve needs matching 1-D x and y of length >= 1, got shapes {x.shape} and {y.shape}.")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"Evaluation steps must increase strictly, got {x.tolist()}.")
    if not np.all(np.isfinite(y)):
        raise ValueError("The metric curve has non-finite values; samples-to-X% is undefined on it.")
    return x, y


def mean_curve(curves: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """m(t): the mean over seeds (and tasks) of curves sampled on the same evaluation steps.

    ``curves`` is ``(n_seeds, n_points)`` or ``(n_seeds, n_tasks, n_points)``; tasks are averaged
    inside a seed first, which gives the same mean as averaging over all (seed, task) pairs.
    """
    data = np.asarray(curves, dtype=float)
    if data.ndim == 1:
        return data
    if data.ndim == 3:
        data = data.mean(axis=1)
    if data.ndim != 2:
        raise ValueError(f"curves must be (seeds, points) or (seeds, tasks, points), got shape {data.shape}.")
    return data.mean(axis=0)


def initial_metric(curves: Sequence[Sequence[float]] | np.ndarray) -> float:
    """m_0: the step-0 metric (the initial policies), mean over seeds and tasks."""
    return float(mean_curve(curves)[0])


def reference_metric(curves: Sequence[Sequence[float]] | np.ndarray, n_final: int = N_FINAL_EVALUATIONS) -> float:
    """m_ref: the mean of the last ``n_final`` evaluations of PPO's mean curve (its final metric)."""
    curve = mean_curve(curves)
    if n_final < 1:
        raise ValueError(f"n_final must be >= 1, got {n_final}.")
    return float(curve[-min(n_final, len(curve)):].mean())


def progress(y: Sequence[float], m_0: float, m_ref: float) -> np.ndarray:
    """progress(t) = (m(t) - m_0) / (m_ref - m_0); 0 at the initial policies, 1 at PPO's final metric."""
    if not (math.isfinite(m_0) and math.isfinite(m_ref)) or m_ref == m_0:
        raise ValueError(
            f"progress needs m_ref != m_0 (both finite), got m_0={m_0}, m_ref={m_ref}: the reference did not move "
            "from the initial policies, so 'X% of the way' has no meaning. Train the reference longer."
        )
    return (np.asarray(y, dtype=float) - m_0) / (m_ref - m_0)


def samples_to_fraction(x: Sequence[float], y: Sequence[float], m_0: float, m_ref: float,
                        fraction: float = 0.8) -> float | None:
    """The first env step at which progress reaches ``fraction``, linearly interpolated between the
    evaluation points ``x``; ``None`` if it never does within the curve (not reached in the budget).
    """
    x, y = _as_curve(x, y)
    p = progress(y, m_0, m_ref)
    hits = np.flatnonzero(p >= fraction)
    if len(hits) == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    # p[i-1] < fraction <= p[i]: the straight line between the two evaluations crosses it once
    w = (fraction - p[i - 1]) / (p[i] - p[i - 1])
    return float(x[i - 1] + w * (x[i] - x[i - 1]))


def samples_to_bound(x: Sequence[float], y: Sequence[float], m_0: float, m_ref: float,
                     fraction: float = 0.8) -> Bounded:
    """:func:`samples_to_fraction` as a :class:`Bounded`: not reached is a lower bound at the budget."""
    steps = samples_to_fraction(x, y, m_0, m_ref, fraction)
    if steps is None:
        return Bounded(float(np.asarray(x, dtype=float)[-1]), "lower", "not reached within the budget")
    return Bounded(steps)


def samples_ratio(reference: Bounded, candidate: Bounded) -> Bounded:
    """reference samples / candidate samples (e.g. PPO's samples-to-80% over ML3's), with bounds.

    > 1 means the candidate needs fewer samples. A candidate that never reached the threshold has
    needed more than its budget, so the ratio is at most reference / budget ("upper"); a reference
    that never reached it gives "lower"; neither reaching it leaves the ratio undefined.
    """
    for b in (reference, candidate):
        if b.kind not in ("exact", "lower"):
            raise ValueError(f"samples must be exact or lower bounds, got {b}.")
    if reference.kind == "lower" and candidate.kind == "lower":
        return Bounded(None, "undefined", "neither reached the threshold")
    if candidate.value == 0:
        if reference.value == 0:
            return Bounded(1.0, "exact", "both at the threshold from the start")
        return Bounded(None, "undefined", "the candidate is at the threshold before any update")
    ratio = reference.value / candidate.value
    if candidate.kind == "lower":
        return Bounded(ratio, "upper", "the candidate did not reach the threshold")
    if reference.kind == "lower":
        return Bounded(ratio, "lower", "the reference did not reach the threshold")
    return Bounded(ratio)


def break_even_tasks(meta_train_samples: float | None, ml3: Bounded, ppo: Bounded) -> Bounded:
    """The number of meta-test tasks N from which ML3's total cost is below PPO from scratch per task.

    ML3 pays ``meta_train_samples`` once plus ``ml3`` samples per task; PPO pays ``ppo`` per task.
    N is the smallest integer >= 1 with ``meta_train + N * ml3 < N * ppo``, i.e.
    ``N = floor(meta_train / (ppo - ml3)) + 1``; ``"never"`` when ML3 needs at least as many samples
    per task as PPO. Bounds on ``ml3``/``ppo`` (not reached) turn N into a bound or into "never".
    """
    if meta_train_samples is None:
        return Bounded(None, "undefined", "meta-train samples unknown")
    if meta_train_samples < 0:
        raise ValueError(f"meta_train_samples must be >= 0, got {meta_train_samples}.")
    if ml3.kind == "lower" and ppo.kind == "lower":
        return Bounded(None, "undefined", "neither reached the threshold")
    if ml3.kind == "lower":
        # ML3 needs more than its budget per task; PPO needs exactly ppo.value (<= that budget if the
        # budgets match), so ML3 never pays off unless PPO was given more budget than ML3.
        if ppo.value <= ml3.value:
            return Bounded(None, "never", "ML3 did not reach the threshold; PPO did")
        return Bounded(None, "undefined", "ML3 did not reach the threshold within a smaller budget than PPO's")
    gap = ppo.value - ml3.value  # PPO's extra samples per task (a lower bound if PPO did not reach it)
    if gap <= 0:
        if ppo.kind == "lower":
            return Bounded(None, "undefined", "PPO did not reach the threshold, ML3 needed its whole budget")
        return Bounded(None, "never", "ML3 needs at least as many samples per task as PPO")
    n = math.floor(meta_train_samples / gap) + 1
    if ppo.kind == "lower":
        return Bounded(float(n), "upper", "PPO did not reach the threshold: the true gap is larger")
    return Bounded(float(n))


# ---------------------------------------------------------------------------------------- report
def compare_curves(
    x: Sequence[float],
    curves: Mapping[str, Sequence[Sequence[float]] | np.ndarray],
    reference: str = "ppo",
    candidate: str | None = "ml3",
    meta_train_samples: float | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """The whole METRICS.md report for learning curves on a shared evaluation schedule ``x``.

    ``curves`` maps an algorithm to its per-seed curves (``(seeds, points)`` or ``(seeds, tasks,
    points)``), all starting from the same initial policies. Returns ``m_0``, ``m_ref``, per algorithm
    the final metric (mean of its last 3 evaluations), samples to each threshold (``None`` if not
    reached) as :class:`Bounded` dicts and its progress curve; for ``candidate`` also the ratio
    reference/candidate and the break-even per threshold.
    """
    if reference not in curves:
        raise ValueError(f"The reference algorithm {reference!r} has no curves (got {sorted(curves)}): "
                         "m_ref is PPO's final metric, so run PPO beside the others.")
    x = np.asarray(x, dtype=float)
    means = {name: mean_curve(c) for name, c in curves.items()}
    for name, m in means.items():
        if m.shape != x.shape:
            raise ValueError(f"The curves of {name!r} have {m.shape[-1]} points, the schedule {len(x)}.")
    m_0 = float(np.mean([m[0] for m in means.values()]))
    m_ref = reference_metric(means[reference])
    report: dict[str, Any] = {
        "m_0": m_0,
        "m_ref": m_ref,
        "reference": reference,
        "thresholds": list(thresholds),
        "algorithms": {},
    }
    if m_ref == m_0:
        report["note"] = "PPO's final metric equals the initial one: progress is undefined."
        return report
    improved = m_ref > m_0
    if not improved:
        report["note"] = ("PPO ended below the initial policies (m_ref < m_0): samples-to-X%, ratios and "
                          "break-even are undefined. Train the reference longer.")
    samples: dict[str, dict[float, Bounded]] = {}
    for name, m in means.items():
        samples[name] = {f: samples_to_bound(x, m, m_0, m_ref, f) if improved
                         else Bounded(None, "undefined", "m_ref < m_0") for f in thresholds}
        report["algorithms"][name] = {
            "final_metric": reference_metric(m),
            "initial_metric": float(m[0]),
            "progress": progress(m, m_0, m_ref).tolist(),
            "final_progress": float(progress([reference_metric(m)], m_0, m_ref)[0]),
            "samples_to": {_pct(f): samples[name][f].to_dict() for f in thresholds},
        }
    if candidate is not None and candidate in curves and candidate != reference and improved:
        report["candidate"] = candidate
        report["ratio"] = {_pct(f): samples_ratio(samples[reference][f], samples[candidate][f]).to_dict()
                           for f in thresholds}
        report["meta_train_samples"] = meta_train_samples
        report["break_even_tasks"] = {
            _pct(f): break_even_tasks(meta_train_samples, samples[candidate][f], samples[reference][f]).to_dict()
            for f in thresholds
        }
    return report


def _pct(fraction: float) -> str:
    return f"{round(100 * fraction)}%"


__all__ = [
    "BOUND_KINDS",
    "Bounded",
    "N_FINAL_EVALUATIONS",
    "THRESHOLDS",
    "break_even_tasks",
    "compare_curves",
    "initial_metric",
    "mean_curve",
    "progress",
    "reference_metric",
    "samples_ratio",
    "samples_to_bound",
    "samples_to_fraction",
]
