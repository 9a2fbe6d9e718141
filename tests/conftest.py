"""Shared test fixtures: where the reference data lives, and GPU skipping."""
from __future__ import annotations

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

