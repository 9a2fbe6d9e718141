"""Reading files a stranger wrote: paths kept inside their own folder, JSON with bounded nesting.

A dataset (COCO JSON, YOLO folder, zip) names files and holds nested data; both may be hostile. The
training loader (`training.data`), the app's import (`app.interop.imports`, `app.interop.import_sources`) and the
workspace's own stored paths (`app.store.records.resolve_inside`) use these two rules, so there is one
implementation of each:

    path = inside(image_dir, entry["file_name"])  # OutsideError for '../..', '/etc/..', a symlink out
    data = read_json(ann_file, "COCO annotation")  # InputError: missing, not JSON, nested too deep

`inside` resolves the path (``..`` collapsed, symbolic links followed) before comparing, so what is
opened afterwards is the file that was checked. `read_json` refuses nesting deeper than
`MAX_JSON_DEPTH` (COCO and YouTube-VIS need 5 levels) before any code walks the data: a file nested
100k levels deep is one line, not a RecursionError.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from condinst.errors import UserError

MAX_JSON_DEPTH = 64

_NOT_SYNTAX = bytes(b for b in range(256) if b not in b'[]{}"')  # all but brackets and quotes


class InputError(UserError, ValueError):
    """A file from outside that cannot be read as what it should be (one line naming it)."""


class OutsideError(InputError):
    """A path from a file that points outside the folder it must stay in."""


def inside(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``root / relative`` resolved (``..`` collapsed, symlinks followed); OutsideError unless it lies
    inside ``root`` (an absolute ``relative`` is outside unless it resolves into ``root``)."""
    base = Path(root).resolve()
    try:
        candidate = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, NUL byte
        raise OutsideError(f"path {str(relative)[:200]!r} cannot be resolved inside {base} ({exc})") from None
    if candidate != base and base not in candidate.parents:
        raise OutsideError(f"path {str(relative)[:200]!r} points outside the folder {base}")
    return candidate


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` (absolute, or relative to ``root``) resolves inside ``root``."""
    try:
        inside(root, path)
    except OutsideError:
        return False
    return True


def json_depth(data: bytes) -> int:
    """The deepest nesting of brackets in a JSON text (string contents ignored), in C-speed passes."""
    # escapes go first (left to right, as a parser reads them), then all but brackets and quotes
    syntax = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_SYNTAX)
    if not syntax:
        return 0
    codes = np.frombuffer(syntax, np.uint8)
    in_string = np.cumsum(codes == ord('"'), dtype=np.int64) % 2 == 1
    steps = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int32) - ((codes == ord("]")) | (codes == ord("}")))
    steps[in_string] = 0
    return int(np.cumsum(steps).max())


def parse_json(data: bytes | str, name: str) -> Any:
    """Parse a JSON text from outside; InputError naming ``name`` if it is not JSON or nested too deep."""
    try:
        parsed = json.loads(data)
    except RecursionError:
        raise InputError(f"{name}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not a text JSON file ({exc.reason})") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError(f"{name}: not valid JSON ({str(exc)[:100]})") from None
    if isinstance(parsed, (list, dict)) and json_depth(data if isinstance(data, bytes) else data.encode()) \
            > MAX_JSON_DEPTH:
        raise InputError(f"{name}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return parsed


def read_json(path: str | os.PathLike, what: str = "JSON") -> Any:
    """Read and parse a JSON file from outside; InputError (one line) when it is missing, a folder, not
    JSON, or nested deeper than `MAX_JSON_DEPTH`. ``what`` names the file's role in messages."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a {what} JSON file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_json(data, str(path))
