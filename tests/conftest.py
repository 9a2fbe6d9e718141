"""Shared test fixtures: where the reference data lives, GPU skipping, torch state kept per test, and the
timeout scale of every wait (tests/testutils.py)."""
from __future__ import annotations

import os
import random
import shutil
import tempfile

import numpy as np
import pytest
import torch

from testutils import PARITY, TIMEOUT_SCALE_ENV, timeout_scale


def _xdist_worker_count(config) -> int:
    """How many pytest-xdist workers share the machine (0: this process runs every test itself)."""
    return int(getattr(config, "workerinput", {}).get("workercount", 0))


def _xdist_controller(config) -> bool:
    return getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")


def pytest_configure(config):
    """Measure the timeout scale once per session and export it: pytest-xdist's workers (started after this)
    and the tests' subprocesses read the same value instead of measuring again. Each process that runs tests
    gets its own Gradio file cache (GRADIO_TEMP_DIR, else /tmp/gradio is shared with every other test run on
    the machine); an xdist worker gets its share of the cores for torch (and its subprocesses)."""
    os.environ.setdefault(TIMEOUT_SCALE_ENV, str(timeout_scale()))
    if not _xdist_controller(config) and "GRADIO_TEMP_DIR" not in os.environ:
        config._gradio_temp_dir = tempfile.mkdtemp(prefix="condinst-tests-gradio-")
        os.environ["GRADIO_TEMP_DIR"] = config._gradio_temp_dir
    workers = _xdist_worker_count(config)
    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def pytest_unconfigure(config):
    if getattr(config, "_gradio_temp_dir", None):
        shutil.rmtree(config._gradio_temp_dir, ignore_errors=True)


def pytest_report_header(config):
    return f"wait limits x{timeout_scale()} ({TIMEOUT_SCALE_ENV}; measured once per session unless set)"


def pytest_collection_modifyitems(config, items):
    for item in items:  # a test that drives Chromium is a browser test (and slow), whatever its module says
        if "browser" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
    if _xdist_worker_count(config):
        # `--dist loadfile --no-loadscope-reorder` hands out whole modules (their module fixtures and the order of
        # their tests as in one process) in this order: the browser modules (together: one Chromium per worker),
        # the modules with slow tests, the rest; so no long test starts last.
        slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: 0 if item.get_closest_marker("browser") else
                   1 if item.nodeid.split("::")[0] in slow_modules else 2)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Close the shared Chromium (tests/browserkit.py) after the last of a run of browser tests."""
    if item.get_closest_marker("browser") and (nextitem is None or not nextitem.get_closest_marker("browser")):
        from browserkit import close_shared_chromium

        close_shared_chromium()


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
