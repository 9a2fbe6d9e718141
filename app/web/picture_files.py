"""Pictures the page is sent, as files written once and never rewritten while they may be served.

Gradio stores a NumPy picture a handler returns in its cache under the hash of the encoded bytes and
writes that file again, in place, each time the same picture is returned
(`gradio.processing_utils.save_pil_to_cache` truncates and rewrites it). Two people looking at one
image get the same picture: the second request's rewrite truncated the file while the first
response was streaming it, and that response ended short (the server logged h11's "Too little data
for declared Content-Length"; 1 of 359 responses with 16 clients).

The handlers hand Gradio `picture_file(rgb)` instead: the picture encoded as Gradio would, written
under a temporary name and renamed into place (a reader sees all of it or none), in Gradio's cache
folder so that it is served as it is and deleted with the cache. A file of the same bytes that is
already there is used again and never written: only its ctime is refreshed, so that the cache's
cleanup (by age) does not remove it just as it is handed out again.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from condinst.io import atomic_write_bytes

SUFFIX = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def cache_folder() -> Path:
    """Gradio's cache folder (GRADIO_TEMP_DIR, else <tmp>/gradio): files in it are served as they are."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def encode(rgb: np.ndarray, fmt: str = "jpeg") -> bytes:
    """An (H, W, 3) uint8 RGB picture as `fmt` bytes (PIL's defaults, as Gradio encodes pictures)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format=fmt.upper())
    return buffer.getvalue()


def picture_file(rgb: np.ndarray | None, fmt: str = "jpeg", folder: str | os.PathLike | None = None) -> str | None:
    """The path of a file holding `rgb` encoded as `fmt` (None for None), under `folder` (default:
    Gradio's cache); named by the hash of its bytes and never rewritten once there."""
    if rgb is None:
        return None
    data = encode(rgb, fmt)
    path = Path(folder or cache_folder()) / f"condinst-{hashlib.sha256(data).hexdigest()[:40]}" \
        / f"picture.{SUFFIX.get(fmt, fmt)}"
    try:  # there already: ctime (the cleanup's measure of age) refreshed, content untouched
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
    except FileNotFoundError:
        atomic_write_bytes(path, data, durable=False)  # a cache: a crash may lose it
    return str(path)
