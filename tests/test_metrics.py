"""METRICS.md's samples-to-X%, ratio and break-even, checked on hand-made curves."""

import math

import numpy as np
import pytest

from sb3_ml3.metrics import (
    Bounded,
    break_even_tasks,
    compare_curves,
    initial_metric,
    mean_curve,
    progress,
    reference_metric,
    samples_ratio,
    samples_to_bound,
    samples_to_fraction,
)

X = [0, 1000, 2000, 3000, 4000]


def test_interpolates_linearly_between_evaluations():
    # progress 0, 0.25, 0.5, 1.0, 1.0: 80% lies 60% of the way from 2000 to 3000
    y = [0.0, 2.5, 5.0, 10.0, 10.0]
    assert samples_to_fraction(X, y, 0.0, 10.0, 0.8) == pytest.approx(2600.0)
    assert samples_to_fraction(X, y, 0.0, 10.0, 0.5) == pytest.approx(2000.0)  # exactly on a point
    assert samples_to_fraction(X, y, 0.0, 10.0, 0.1) == pytest.approx(400.0)
    assert samples_to_fraction(X, y, 0.0, 10.0, 0.0) == 0.0  # at the start


def test_first_crossing_counts_even_if_the_curve_falls_back():
    y = [0.0, 9.0, 1.0, 1.0, 1.0]
    assert samples_to_fraction(X, y, 0.0, 10.0, 0.8) == pytest.approx(1000 * 8 / 9)


def test_never_reached_is_none_and_a_lower_bound_at_the_budget():
    y = [0.0, 2.0, 4.0, 5.0, 5.5]
    assert samples_to_fraction(X, y, 0.0, 10.0, 0.8) is None
    b = samples_to_bound(X, y, 0.0, 10.0, 0.8)
    assert (b.value, b.kind) == (4000.0, "lower") and b.text() == ">= 4e+03"


def test_negative_metrics_measure_progress_from_the_initial_policies():
    # the metric is -distance: from -40 to -10 is 100% progress; -34 is 20%, -16 is 80%
    y = [-40.0, -34.0, -22.0, -16.0, -10.0]
    assert progress(y, -40.0, -10.0).tolist() == pytest.approx([0.0, 0.2, 0.6, 0.8, 1.0])
    assert samples_to_fraction(X, y, -40.0, -10.0, 0.8) == pytest.approx(3000.0)
    assert samples_to_fraction(X, y, -40.0, -10.0, 0.5) == pytest.approx(1000 + 1000 * 0.3 / 0.4)


def test_m0_mean_over_seeds_and_tasks_and_mref_mean_of_last_three():
    # (seeds=2, tasks=2, points=5)
    curves = np.array([
        [[-4, -3, -2, -1, 0], [-6, -5, -4, -3, -2]],
        [[-2, -1, 0, 1, 2], [-8, -7, -6, -5, -4]],
    ], dtype=float)
    assert mean_curve(curves).tolist() == [-5, -4, -3, -2, -1]
    assert initial_metric(curves) == -5.0
    assert reference_metric(curves) == pytest.approx(-2.0)  # mean(-3, -2, -1)
    assert reference_metric([[1.0, 2.0]]) == 1.5  # fewer than 3 points: all of them


def test_degenerate_reference_and_bad_curves_are_refused():
    with pytest.raises(ValueError, match="m_ref != m_0"):
        progress([1.0, 2.0], 3.0, 3.0)
    with pytest.raises(ValueError, match="increase strictly"):
        samples_to_fraction([0, 2, 1], [0, 1, 2], 0.0, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        samples_to_fraction([0, 1], [0, float("nan")], 0.0, 1.0)


def test_ratio_with_bounds():
    assert samples_ratio(Bounded(5000.0), Bounded(1000.0)) == Bounded(5.0)
    upper = samples_ratio(Bounded(3000.0), Bounded(10000.0, "lower"))  # ML3 not reached in 10k
    assert (upper.value, upper.kind) == (0.3, "upper") and upper.text() == "<= 0.3"
    lower = samples_ratio(Bounded(10000.0, "lower"), Bounded(2000.0))
    assert (lower.value, lower.kind) == (5.0, "lower")
    assert samples_ratio(Bounded(10000.0, "lower"), Bounded(10000.0, "lower")).kind == "undefined"


def test_break_even():
    # meta-train 100k; ML3 2k per task, PPO 10k: 100k + N*2k < N*10k  <=>  N > 12.5  ->  13
    assert break_even_tasks(100_000, Bounded(2000.0), Bounded(10000.0)) == Bounded(13.0)
    # exactly divisible: 80k / 8k = 10 tasks only ties, so 11
    assert break_even_tasks(80_000, Bounded(2000.0), Bounded(10000.0)).value == 11.0
    assert break_even_tasks(0, Bounded(2000.0), Bounded(10000.0)).value == 1.0
    assert break_even_tasks(1e6, Bounded(10000.0), Bounded(10000.0)).kind == "never"
    assert break_even_tasks(1e6, Bounded(20000.0, "lower"), Bounded(10000.0)).kind == "never"  # ML3 not reached
    # PPO not reached within 20k: its true cost is larger, the break-even smaller -> an upper bound
    b = break_even_tasks(100_000, Bounded(2000.0), Bounded(20000.0, "lower"))
    assert (b.value, b.kind) == (6.0, "upper")
    assert break_even_tasks(None, Bounded(1.0), Bounded(2.0)).kind == "undefined"
    assert Bounded(None, "never").text() == "never"


def test_compare_curves_report():
    x = [0, 1000, 2000, 3000, 4000, 5000, 6000]
    ppo = [[-40, -37, -34, -25, -10, -10, -10], [-40, -37, -34, -25, -12, -10, -8]]  # m_ref = -10
    ml3 = [[-40, -16, -14, -13, -12, -12, -12], [-40, -16, -14, -13, -12, -12, -12]]
    report = compare_curves(x, {"ppo": ppo, "ml3": ml3}, meta_train_samples=50_000)
    assert report["m_0"] == -40 and report["m_ref"] == -10
    ppo80 = report["algorithms"]["ppo"]["samples_to"]["80%"]
    ml380 = report["algorithms"]["ml3"]["samples_to"]["80%"]
    assert ppo80["value"] == pytest.approx(3000 + 1000 * (25 - 16) / (25 - 11))  # mean -11 at 4000
    assert ml380["value"] == pytest.approx(1000.0)
    assert report["ratio"]["80%"]["value"] == pytest.approx(ppo80["value"] / 1000.0)
    gap = ppo80["value"] - 1000.0
    assert report["break_even_tasks"]["80%"]["value"] == math.floor(50_000 / gap) + 1
    assert report["algorithms"]["ml3"]["final_progress"] == pytest.approx((-12 + 40) / 30)
    with pytest.raises(ValueError, match="reference"):
        compare_curves(x, {"ml3": ml3})


def test_a_reference_that_got_worse_leaves_samples_and_ratio_undefined():
    x = [0, 1, 2, 3]
    report = compare_curves(x, {"ppo": [[-1.0, -2.0, -2.0, -2.0]], "ml3": [[-1.0, -3.0, -3.0, -3.0]]})
    assert "m_ref < m_0" in report["note"] and "ratio" not in report
    assert report["algorithms"]["ml3"]["samples_to"]["80%"]["kind"] == "undefined"
