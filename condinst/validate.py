"""Checks of command-line arguments, run before any model is loaded so that no work is lost.

Two kinds:

* argparse `type=` functions for numbers (`probability`, `positive_int`, `non_negative_int`,
  `edge_size`): they refuse nan, inf and out-of-range values while the command line is parsed;
* path and device checks (`existing_file`, `existing_dir`, `writable_file`, `writable_dir`,
  `check_device`), called at the top of a command; each raises `ArgumentError` naming the flag.

`OneLineParser` is the ArgumentParser of the commands: its errors are one `error: ...` line
(exit code 2) instead of a usage block.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import uuid
from pathlib import Path

from .errors import EXIT_USAGE, UserError


class ArgumentError(UserError):
    """A command-line argument that cannot work: out of range, a missing input, an unwritable output."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `error: <prog>: <message>`, with exit code 2."""

    def error(self, message: str):
        message = " ".join(message.split())
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# ---- numbers (argparse types) -------------------------------------------------------------------

def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def probability(text: str) -> float:
    """A finite number in [0, 1] (score thresholds)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, iterations, batch sizes, periods)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


MAX_TEST_SIZE = 4096  # largest --min-size / --max-size: its square is preprocess.MAX_INPUT_PIXELS


def edge_size(text: str) -> int:
    """A test-time image edge (--min-size / --max-size): an integer in 1..MAX_TEST_SIZE, so that no
    resized input exceeds a model input's pixel budget (`preprocess.MAX_INPUT_PIXELS`, 16.8 MP)."""
    value = positive_int(text)
    if value > MAX_TEST_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TEST_SIZE} pixels, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker counts, periods where 0 means 'off', seeds)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


# ---- paths ------------------------------------------------------------------------------------

def existing_file(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ArgumentError(f"{flag} {path}: is a folder, expected a file")
    if not path.is_file():
        raise ArgumentError(f"{flag} {path}: no such file")
    return path


def existing_dir(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ArgumentError(f"{flag} {path}: no such folder" + (" (it is a file)" if path.exists() else ""))
    return path


def _probe(folder: Path, flag: str, target: Path) -> None:
    """Create and remove a file in `folder`: proves that `target` (in or under it) can be written."""
    probe = folder / f".condinst-write-probe-{uuid.uuid4().hex}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise ArgumentError(f"{flag} {target}: cannot write in {folder} ({e.strerror or e})") from None


def _nearest_existing(path: Path) -> Path:
    for folder in [path, *path.parents]:
        if folder.exists():
            return folder
    return Path(".")


def writable_file(path: str | os.PathLike, flag: str) -> Path:
    """A file that can be created or replaced: not a folder, its (nearest existing) folder writable.

    Missing parent folders are fine (writers create them) as long as they can be created.
    """
    path = Path(path)
    if path.is_dir():
        raise ArgumentError(f"{flag} {path}: is a folder, expected a file name")
    if path.exists() and not path.is_file():
        raise ArgumentError(f"{flag} {path}: exists and is not a regular file")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise ArgumentError(f"{flag} {path}: {folder} is a file, not a folder")
    _probe(folder, flag, path)
    return path


def writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """A folder that exists and can be written, or that can be created (nothing is created here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"{flag} {path}: exists and is not a folder")
    folder = _nearest_existing(path)
    if not folder.is_dir():
        raise ArgumentError(f"{flag} {path}: {folder} is a file, not a folder")
    _probe(folder, flag, path)
    return path


# ---- devices ----------------------------------------------------------------------------------

def check_device(name: str | None, flag: str = "--device") -> None:
    """'cpu', 'cuda', 'cuda:N' (or None / 'auto': chosen later): the device must exist here."""
    if name is None or name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ArgumentError(f"{flag} {name}: not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise ArgumentError(f"{flag} {name}: unsupported device type {device.type!r} (use cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise ArgumentError(f"{flag} {name}: CUDA is not available on this machine (use --device cpu)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ArgumentError(f"{flag} {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
