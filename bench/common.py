"""Helpers shared by the benchmark scripts: devices, timing, environment record, tables, JSON.

    device = resolve_device("auto")                      # cuda when available, else cpu
    timing = time_fn(lambda: model(x), device, iters=50, warmup=10, batch_size=8)
    print(format_table(rows, [("model", "model", "{}"), ("ms/image", "ms_per_image", "{:.1f}")]))
    write_json(path, {"benchmark": "inference", "environment": environment(device), ...})

Timings are wall-clock (`time.perf_counter`) with the device synchronised before and after every
timed iteration, so an iteration includes all host work, host<->device syncs and kernel time.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from condinst.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- command line ---------------------------------------------------------------------------------

def add_common_args(parser: argparse.ArgumentParser, name: str, iters: int, warmup: int) -> None:
    """--device, --iters, --warmup, --threads, --seed, --out, --no-cudnn-benchmark."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    parser.add_argument("--iters", type=int, default=iters, help="timed iterations (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed warm-up iterations (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; recorded in the JSON)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help="JSON result file (default %(default)s)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true",
                        help="leave torch.backends.cudnn.benchmark off (it is on by default on CUDA)")


def parse_size(text: str) -> tuple[int, int]:
    """'480x640' -> (480, 640), height first."""
    try:
        h, w = text.lower().split("x")
        size = int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 480x640, got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return size


def parse_list(text: str, kind: Callable[[str], Any] = str) -> list:
    """'1,8' -> [1, 8] with kind=int; '480x640,800x1067' -> [(480, 640), (800, 1067)] with parse_size."""
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads / --seed / cudnn benchmark and return the device of --device."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    return device


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch.device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- timing ---------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    """Wait for all queued kernels of `device` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int,
            batch_size: int = 1) -> dict[str, Any]:
    """Run `fn` `warmup` times untimed, then `iters` times timed; returns `summarize` of the times.

    The device is synchronised before and after every timed call, so a call's time covers its
    host work, its host<->device synchronisations and all of its kernels.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times_ms = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times_ms.append((time.perf_counter() - start) * 1000.0)
    return summarize(times_ms, batch_size)


def summarize(times_ms: list[float], batch_size: int = 1) -> dict[str, Any]:
    """Median / p10 / p90 / IQR / mean / min of per-call times (ms), plus per-image figures."""
    t = np.asarray(times_ms, dtype=np.float64)
    p10, p25, median, p75, p90 = np.percentile(t, [10, 25, 50, 75, 90])
    return {
        "iters": int(t.size),
        "batch_size": int(batch_size),
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "iqr_ms": float(p75 - p25),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "ms_per_image": float(median / batch_size),
        "images_per_s": float(batch_size * 1000.0 / median) if median > 0 else float("inf"),
        "times_ms": [float(x) for x in t],
    }


# ---- memory ---------------------------------------------------------------------------------------

def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> dict[str, float | None]:
    """Peak allocated / reserved CUDA memory since the last `reset_peak_memory` (None on CPU)."""
    if device.type != "cuda":
        return {"peak_allocated_mb": None, "peak_reserved_mb": None}
    synchronize(device)
    return {"peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}


def release_memory(device: torch.device) -> None:
    """Return cached blocks between benchmarks so that one model's cache does not hide another's peak."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()


# ---- precision ------------------------------------------------------------------------------------

def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast on `device` with `dtype`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---- environment ----------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    """HEAD of the repository (read-only `git rev-parse`), None outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    """Everything needed to compare two result files: hardware, versions, threads, math settings."""
    import torchvision

    env: dict[str, Any] = {
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "device_name": props.name,
            "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    return env


# ---- output ---------------------------------------------------------------------------------------

def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table. columns: (header, key in row, format such as '{:.1f}'); None prints '-'."""
    cells = [[header for header, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else fmt.format(value))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [all(_is_number(row.get(key)) for row in rows) for _, key, _ in columns]

    def render(line: list[str]) -> str:
        return "  ".join(cell.rjust(w) if num else cell.ljust(w)
                         for cell, w, num in zip(line, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(cells[0]), rule] + [render(line) for line in cells[1:]])


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` as indented JSON atomically (temporary file in the same folder + rename)."""
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return Path(path)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON-friendly values."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[key] = value
    return out
