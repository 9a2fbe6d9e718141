"""Helpers shared by the tests (importable: `tests/` is on pytest's pythonpath)."""
from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import statistics
import time
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONDINST_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "reference" / "parity"
DATASETS = SHARED / "datasets"

# ---- waiting for events, never racing the clock --------------------------------------------------------
# A test waits for an event (a file, a line, a state) and gives up only after a generous limit. Every limit
# is written for an idle 2-core machine and multiplied by `timeout_scale()`: CONDINST_TEST_TIMEOUT_SCALE if
# set, else how much slower than on that machine a fixed CPU workload runs now, or the load average per core if
# larger (measured once per session by tests/conftest.py, which exports the value so pytest-xdist workers and
# subprocesses share it). Base limits are generous: they only turn a hang into a failure.
TIMEOUT_SCALE_ENV = "CONDINST_TEST_TIMEOUT_SCALE"
_WORKLOAD_STEPS = 1_000_000
_WORKLOAD_REFERENCE_S = 0.1  # wall time of _workload() on an idle 2-core machine (CPU time: 0.09-0.1 s)
_MAX_SCALE = 50.0


def _workload() -> float:
    """Seconds of wall time a fixed pure-Python loop takes now."""
    start, total = time.perf_counter(), 0
    for k in range(_WORKLOAD_STEPS):
        total += k * k % 7
    return time.perf_counter() - start


def measure_timeout_scale() -> float:
    """1 when idle; when busy, the larger of (median of 3 workload timings / the reference) and the load average
    per core (a lucky moment of the workload does not hide a busy machine)."""
    ratio = statistics.median(_workload() for _ in range(3)) / _WORKLOAD_REFERENCE_S
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0.0
    return round(min(_MAX_SCALE, max(1.0, ratio, load)), 1)


@functools.cache
def timeout_scale() -> float:
    """The factor every wait limit of the tests is multiplied by (>= 1)."""
    value = os.environ.get(TIMEOUT_SCALE_ENV, "").strip()
    if not value:
        return measure_timeout_scale()
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_SCALE_ENV}={value!r}: expected a number >= 1") from None
    if not 1.0 <= scale <= 1000.0:
        raise ValueError(f"{TIMEOUT_SCALE_ENV}={value!r}: expected a number from 1 to 1000")
    return scale


def scaled(seconds: float) -> float:
    """A wait limit of `seconds` on an idle machine, for this machine now."""
    return seconds * timeout_scale()


def scaled_ms(seconds: float) -> float:
    """`scaled(seconds)` in milliseconds (Playwright's timeouts)."""
    return 1000.0 * scaled(seconds)


def http_timeout() -> dict:
    """`gradio_client.Client(..., httpx_kwargs=http_timeout())`: each request may take scaled(60) s (httpx's
    default, 5 s, is a race on a busy machine)."""
    return {"timeout": scaled(60)}


T = TypeVar("T")


def wait_until(condition: Callable[[], T], seconds: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition()` until it returns a true value (returned); AssertionError naming `what` after
    `scaled(seconds)`. The condition decides: a limit only turns a hang into a failure."""
    limit = scaled(seconds)
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up waiting for {what} after {limit:.0f} s "
                                 f"(timeout scale {timeout_scale()}; set {TIMEOUT_SCALE_ENV} on a slow machine)")
        time.sleep(interval)


def tiny_config(num_classes: int = 80, **mask_head):
    """The parity fixtures' TINY architecture (R-50 depth, narrow channels)."""
    from condinst.config import BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig

    cfg = CondInstConfig(name="tiny", backbone=BackboneConfig(stem_out_channels=16, res2_out_channels=64,
                                                              width_per_group=16),
                         neck=NeckConfig(out_channels=32), mask_branch=MaskBranchConfig(channels=16))
    cfg.fcos.num_classes = num_classes
    cfg.input.min_size_test = 320
    for k, v in mask_head.items():
        setattr(cfg.mask_head, k, v)
    return cfg


def randomize_(model, seed: int = 0):
    """Deterministic non-trivial weights (like the parity recipe) so detections and masks exist."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            n = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() == 4:
                gain = 1 / 64 if "stem.conv1" in name else (3.0 if "cls_logits" in name else 1.0)
                t.copy_(n * gain / (t[0].numel() ** 0.5))
            elif name.endswith("cls_logits.bias"):
                t.copy_(-8 + 0.1 * n)
            elif name.endswith("bbox_pred.bias"):
                t.copy_(2 + 0.1 * n)
            elif name.endswith("conv3.norm.weight"):
                t.copy_(0.5 + 0.1 * n)
            elif name.endswith(".weight") or name.endswith(".scale"):
                t.copy_(1 + 0.1 * n)
            else:
                t.copy_(0.1 * n)
    return model


def official_recipe_state_dict(keys: list[dict]) -> dict:
    """Rebuild the parity weights from their key list with the documented randomisation recipe
    (shared/reference/parity/README.md): one generator per key seeded with crc32(key)."""
    import zlib

    import torch

    shapes = {k["key"]: k["shape"] for k in keys}
    sd = {}
    for entry in keys:
        key, shape = entry["key"], entry["shape"]
        if entry["dtype"] != "float32" or key in ("mask_head.sizes_of_interest", "mask_head._iter"):
            sd[key] = (torch.tensor([64, 128, 256, 512, 1024]) if key.endswith("sizes_of_interest")
                       else torch.zeros(shape, dtype=getattr(torch, entry["dtype"])))
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
        prefix, name = key.rsplit(".", 1)
        is_conv = len(shapes.get(prefix + ".weight", [])) == 4
        if name == "running_var":
            value = 0.5 + torch.rand(shape, generator=g)
        else:
            n = torch.randn(shape, generator=g)
            if len(shape) == 4:
                gain = 1 / 64 if key.endswith("bottom_up.stem.conv1.weight") or key.endswith(
                    "bottom_up.backbone.stem.conv1.weight") else 3.0 if key.endswith("fcos_head.cls_logits.weight") else 1.0
                value = n * gain / (shape[1] * shape[2] * shape[3]) ** 0.5
            elif name == "bias" and is_conv:
                offset = -8.0 if key.endswith(("cls_logits.bias", "mask_branch.logits.bias")) else \
                    2.0 if key.endswith("bbox_pred.bias") else 1.0 if key.endswith("ctrness.bias") else 0.0
                value = offset + 0.1 * n
            elif name == "weight":
                value = (0.5 if key.endswith("conv3.norm.weight") else 1.0) + 0.1 * n
            elif name == "scale" or ".weights_f" in key or name.startswith("weights_f"):
                value = 1.0 + 0.1 * n
            else:  # norm bias, running_mean
                value = 0.1 * n
        sd[key] = value.float()
    return sd


def tiny_sipmask(preset: str = "sipmask_r50_caffe_fpn_gn_1x", seed: int = 0, min_size: int = 128,
                 box_cells: float = 1.5):
    """A narrow SipMask of `preset` (3 classes) with deterministic weights (`randomize_`) that detects
    everywhere (class logits 0, boxes about 2 x `box_cells` cells wide): (model in eval mode, config)."""
    import torch

    from condinst.arch import get_preset
    from condinst.config import BackboneConfig, NeckConfig
    from condinst.sipmask.model import SipMask

    cfg = get_preset(preset)
    cfg.backbone = BackboneConfig(stem_out_channels=8, res2_out_channels=32, width_per_group=8, freeze_at=2,
                                  dcn_stages=cfg.backbone.dcn_stages)
    cfg.neck = NeckConfig(out_channels=32)
    cfg.fcos.num_classes, cfg.class_names, cfg.category_ids = 3, ("date", "fig", "hazelnut"), (1, 2, 3)
    cfg.input.min_size_test, cfg.input.max_size_test = min_size, 2 * min_size
    model = randomize_(SipMask(cfg.validate()), seed)
    with torch.no_grad():
        model.bbox_head.fcos_cls.bias.fill_(0.0)
        model.bbox_head.fcos_reg.bias.fill_(box_cells)
    return model.eval(), cfg


def run_condinst_here(argv: list[str]) -> subprocess.CompletedProcess:
    """`condinst <argv>` in this process: (exit code, stdout, stderr) as from a subprocess. A crash raises."""
    from condinst.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
