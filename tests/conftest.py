"""Shared pytest settings: deterministic, single-threaded torch so timings and numbers repeat."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_defaults():
    torch.set_num_threads(1)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
