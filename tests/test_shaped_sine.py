"""Loss shaping on the sine frequency (Sec. IV.B.1, Fig. 5a-b): a short seeded run already shows the ordering."""

import argparse
import json
import os

import pytest
import torch

from sb3_ml3.supervised import shaped_sine_cli
from sb3_ml3.supervised.shaped_sine import (
    ShapedSineConfig,
    ShapedSineExperiment,
    SineFrequency,
    sample_train_frequencies,
)


def test_short_shaped_run_reaches_held_out_frequencies_where_mse_does_not():
    torch.set_num_threads(1)
    config = ShapedSineConfig(n_outer=1500, meta_train_points=50, n_init=15, test_steps=30, n_points=300)
    experiment = ShapedSineExperiment(config)
    meta_loss, task_loss = experiment.meta_train_variant("shaped", torch.Generator().manual_seed(0))
    # the shaping task loss (w' - v)^2 falls from ~E(w_0 - v)^2 to well below one
    assert sum(task_loss[-100:]) / 100 < 0.1 * sum(task_loss[:100]) / 100
    final = {}
    for name, loss in (("shaped", meta_loss), ("mse", None)):
        errors = experiment.evaluate(loss, config.test_frequencies, torch.Generator().manual_seed(1))
        assert errors.shape == (len(config.test_frequencies), 15, 31)
        final[name] = float((errors[..., -1].abs() < config.tolerance).float().mean())
    # measured: shaped 1.00, MSE 0.39 of 15 initial w x 6 held-out v within 0.05 of v
    assert final["shaped"] >= 0.9 and final["mse"] < 0.6, final


def test_quick_cli_writes_results_and_landscape(tmp_path):
    parser = argparse.ArgumentParser()
    shaped_sine_cli.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--quick", "--out", str(out), "--no-progress"])
    results = shaped_sine_cli.run(args)
    json.dumps(results)  # JSON-ready: the meta-losses went to their own files
    assert (out / "shaped_sine_landscape.png").stat().st_size > 10_000
    assert all(os.path.exists(f) for f in results["figures"]) and len(results["figures"]) == 3
    assert (out / "meta_loss_shaped_seed0.zip").exists() and (out / "meta_loss_unshaped_seed0.zip").exists()
    seed = results["per_seed"][0]
    for variant in ("shaped", "unshaped", "mse"):
        assert 0.0 <= seed[f"success_test_{variant}"] <= 1.0
        assert len(seed[f"landscape_{variant}"]) == len(results["config"]["test_frequencies"])
    # the MSE landscape has its global minimum near the held-out v = 1.6
    mse = torch.tensor(seed["landscape_mse"][3])
    w = torch.linspace(-7, 7, results["config"]["landscape_points"])
    assert abs(float(w[mse.argmin()]) - 1.6) <= 0.5
    (out / "results.json").write_text("{}")  # what ``ml3`` writes after run(): a second run is refused
    with pytest.raises(ValueError, match="already holds results"):
        shaped_sine_cli.run(args)


def test_train_frequencies_avoid_the_held_out_bands():
    config = ShapedSineConfig()
    v = sample_train_frequencies(config, 5000, torch.Generator().manual_seed(0))
    distance = (v[:, None] - torch.tensor(config.test_frequencies)).abs().min(1).values
    assert float(distance.min()) > config.holdout_margin
    assert float(v.min()) >= -6.0 and float(v.max()) <= 6.0


def test_sign_of_the_frequency_is_not_ambiguous():
    # sin(-v x) = -sin(v x): on symmetric x, w = -v is the MSE's worst point nearby, not a second minimum
    x = torch.linspace(-1, 1, 1001).view(-1, 1)
    optimizee = SineFrequency()
    y = torch.sin(2.0 * x)
    losses = {}
    for w in (2.0, -2.0):
        with torch.no_grad():
            optimizee.w.fill_(w)
            losses[w] = float(((optimizee(x) - y) ** 2).mean())
    assert losses[2.0] == 0.0 and losses[-2.0] > 0.5


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(inner_lr=0.0), "inner_lr must be positive"),
        (dict(batch_tasks=0), "positive sizes"),
        (dict(train_eval_frequencies=(1.7,)), "farther than holdout_margin"),
        (dict(train_eval_frequencies=(6.5,)), "train_frequency_range"),
        (dict(tolerance=-1.0), "tolerance must be positive"),
        (dict(train_frequency_range=(1.0, 1.0)), "low < high"),
        (dict(meta_form="cubic"), "meta_form"),
        (dict(near_fraction=1.5), "near_fraction"),
    ],
)
def test_bad_settings_say_what_to_fix(settings, match):
    with pytest.raises(ValueError, match=match):
        ShapedSineConfig(**settings)


def test_held_out_bands_covering_the_train_range_are_refused():
    with pytest.raises(ValueError, match="shrink holdout_margin"):
        ShapedSineConfig(train_frequency_range=(0.0, 1.0), test_frequencies=(0.2, 0.8), holdout_margin=0.4)


def test_wrong_input_shapes_are_refused():
    optimizee = SineFrequency()
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., N, 1\)"):
        optimizee(torch.zeros(10))
    with pytest.raises(ValueError, match=r"x must have shape"):
        optimizee(torch.zeros(10, 2))
    optimizee.w = torch.nn.Parameter(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="need x of shape"):
        optimizee(torch.zeros(3, 10, 1))
    assert optimizee(torch.zeros(4, 10, 1)).shape == (4, 10, 1)
