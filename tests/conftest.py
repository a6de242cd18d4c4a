"""Shared pytest settings: deterministic, single-threaded torch so timings and numbers repeat."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_defaults():
    torch.set_num_threads(1)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for a test module's distributed tests (skipped where Ray is not installed)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
