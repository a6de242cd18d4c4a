"""The examples run end to end with tiny budgets (--quick)."""

import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, extra", [
    ("meta_train_reacher", []),
    ("compare_pointmass", ["--seeds", "0"]),
])
def test_example_runs_quick(name, extra, tmp_path):
    out = str(tmp_path / name)
    results = _load(name).main(["--quick", "--out", out, *extra])
    for file in ("results.json", "compare_curves.csv", "learning_curves.png"):
        assert os.path.isfile(os.path.join(out, file)), file
    assert "ppo" in results["metrics"][next(iter(results["metrics"]))]["algorithms"]
    if name == "meta_train_reacher":  # the loss is meta-trained on [64, 64], meta-tested on a new architecture
        assert results["config"]["net_archs"] == [[128, 128, 128]]
        assert results["meta_train"]["given"] and results["meta_train"]["samples"] >= 1600

