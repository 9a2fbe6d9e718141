"""Generators of hostile datasets: what a stranger's zip, COCO JSON or YOLO folder may hold.

Everything is small and written under a test's tmp_path: path escapes (``../``, absolute names,
symlinks out of the folder or zip), numbers native code must never see (1e30, 1e308, NaN, ids over
2**63), RLE counts that are not RLE, JSON nested 100k levels deep. `watch_opens` records every file
a process opens, so a test can assert that nothing outside the dataset was read.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

H, W = 40, 60
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]  # a 20x20 polygon inside every image


def write_png(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> Path:
    """A random RGB PNG (different bytes per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def sentinel(folder: Path) -> tuple[Path, bytes]:
    """An image OUTSIDE every dataset (the server's private photo): its path and its bytes, which must
    never appear in a workspace."""
    path = write_png(folder / "private" / "sentinel.png", seed=666)
    return path, path.read_bytes()


def image_entry(image_id: Any, file_name: Any, height: int = H, width: int = W) -> dict:
    return {"id": image_id, "file_name": file_name, "height": height, "width": width}


def annotation(ann_id: Any, image_id: Any, segmentation: Any = None, bbox: Any = None, category_id: Any = 1,
               iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "segmentation": [list(SQUARE)] if segmentation is None else segmentation,
            "bbox": [10.0, 10.0, 20.0, 20.0] if bbox is None else bbox, "area": 400.0}


def coco(images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> dict:
    return {"images": images, "annotations": annotations,
            "categories": categories if categories is not None else [{"id": 1, "name": "thing"}]}


def coco_folder(root: Path, data: dict, pictures: dict[str, int] | None = None) -> tuple[Path, Path]:
    """``root/ann.json`` holding ``data`` and ``root/images/`` with a PNG per name in ``pictures``
    (name -> seed; default: one PNG per image entry whose file_name is a plain name)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    if pictures is None:
        pictures = {e["file_name"]: k for k, e in enumerate(data["images"])
                    if isinstance(e.get("file_name"), str) and "/" not in e["file_name"]}
    for name, seed in pictures.items():
        write_png(images / name, seed)
    ann = root / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, images


def good_coco(extra_images: list[dict] = (), extra_annotations: list[dict] = ()) -> dict:
    """One good image (good.png, id 1) with one good annotation (id 1), plus the hostile extras."""
    return coco([image_entry(1, "good.png"), *extra_images], [annotation(1, 1), *extra_annotations])


def symlink_member(archive: zipfile.ZipFile, name: str, target: str) -> None:
    """A zip member that is a symbolic link (as `zip -y` stores it) to ``target``."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive.writestr(info, target)


def coco_zip(path: Path, data: dict | bytes, files: dict[str, bytes], links: dict[str, str] = ()) -> Path:
    """A dataset zip: ``annotations/instances_default.json`` (``data``, or raw bytes), ``images/default/<name>``
    for each of ``files``, and symlink members ``links`` (member name -> target)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("annotations/instances_default.json",
                         data if isinstance(data, bytes) else json.dumps(data))
        for name, content in files.items():
            archive.writestr(f"images/default/{name}", content)
        for name, target in dict(links).items():
            symlink_member(archive, name, target)
    return path


def yolo_folder(root: Path, lines: dict[str, list[str]], names: list[str] = ("thing",)) -> Path:
    """A YOLO segmentation dataset: data.yaml, images/train/<stem>.png, labels/train/<stem>.txt."""
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(json.dumps({"names": list(names)}))  # JSON is YAML
    for k, (stem, rows) in enumerate(lines.items()):
        write_png(root / "images" / "train" / f"{stem}.png", seed=k)
        (root / "labels" / "train" / f"{stem}.txt").write_text("\n".join(rows) + "\n")
    return root


def deep_json(depth: int = 100_000) -> bytes:
    """A COCO-shaped JSON whose first image entry is a list nested ``depth`` levels deep."""
    return (b'{"categories": [{"id": 1, "name": "thing"}], "annotations": [], "images": ['
            + b"[" * depth + b"]" * depth + b"]}")


def bad_rle_counts() -> list[Any]:
    """Compressed RLE counts that are not COCO RLE for a HxW image (each refused, none decoded)."""
    return ["not rle at all ~~~", "é unicode", "", "0" * 5, "P" * 40, "1" * 200, "\x00\x01"]


def files_under(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()]


def holds_bytes(root: Path, needle: bytes) -> bool:
    """Whether any file under ``root`` contains ``needle`` (a sentinel's bytes)."""
    return any(needle in p.read_bytes() for p in files_under(root))


# ---- watching what is opened ----------------------------------------------------------------------
_WATCHED: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if _WATCHED and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _WATCHED[-1].append(os.fsdecode(args[0]))


@contextlib.contextmanager
def watch_opens() -> Iterator[list[str]]:
    """``with watch_opens() as opened:`` collects the path of every file opened meanwhile (Python's
    audit hook "open": builtins.open, os.open, PIL, zipfile ...)."""
    if not getattr(sys, "_hostile_audit_installed", False):
        sys.addaudithook(_audit)  # a hook cannot be removed: it records only inside this block
        sys._hostile_audit_installed = True
    opened: list[str] = []
    _WATCHED.append(opened)
    try:
        yield opened
    finally:
        _WATCHED.pop()


def opened_under(opened: list[str], folder: Path) -> list[str]:
    """The opened paths that lie in ``folder`` (resolved, so symlinks and '..' count)."""
    folder = Path(folder).resolve()
    return [p for p in opened if Path(p).resolve() == folder or folder in Path(p).resolve().parents]
