"""Shared test fixtures: where the reference data lives, GPU skipping, and torch state kept per test."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from testutils import PARITY


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def parity_dir():
    if not PARITY.is_dir():
        pytest.skip(f"reference data not found at {PARITY} (set CONDINST_SHARED)")
    return PARITY


@pytest.fixture(autouse=True)
def restore_torch_state():
    """Tests that run bench scripts or CLIs in-process change torch's thread count and the seeds; give the
    next test its own back (a parity test's tolerance depends on the reduction order, so on the threads)."""
    threads = torch.get_num_threads()
    torch_rng, np_rng, py_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)
