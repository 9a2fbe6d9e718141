"""Which dataset format a file, folder or extracted zip holds: the front door of `python -m app import --ann`.

    name = detect_format(Path("kudzu/"))        # "coco", "via", "label-studio", "yolo", "cvat", "sam", ...

* a folder holding ``data.yaml``: ``yolo``;
* a JSON (or a folder's JSONs): a list of tasks with ``data``: ``label-studio``; an object with
  ``images``, ``annotations`` and ``categories``: ``coco``; VIA 2.x (``_via_img_metadata``, or
  ``{key: {filename, regions}}``): ``via``;
* a folder where none of these is found, or an XML file: datumaro's own detectors for CVAT XML, LabelMe,
  Pascal VOC (instance masks), Cityscapes, Open Images and Segment Anything (`app.interop.datumaro_import`).

A JSON is only parsed after a size check (`MAX_SNIFF_BYTES`) and with bounded nesting (`read_json`); a
file no rule recognises is one line naming the formats looked for (``--format`` insists on one).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from app.interop.datumaro_import import DATUMARO_FORMATS, detect_datumaro
from app.interop.via import via_images
from condinst.untrusted import InputError, inside, read_json
from training.data import DatasetError

FORMATS = ("coco", "via", "label-studio", "yolo", *DATUMARO_FORMATS)
MAX_SNIFF_BYTES = 2**30


def json_format(data: Any) -> str | None:
    """The format of parsed JSON ``data``, or None."""
    if isinstance(data, list) and data and all(isinstance(t, dict) and "data" in t for t in data[:10]):
        return "label-studio"
    if isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        return "coco"
    if via_images(data) is not None:
        return "via"
    return None


def file_format(path: Path) -> str | None:
    """The format of one JSON file, or None (not JSON, too large, nothing recognised)."""
    if path.suffix.lower() != ".json" or not path.is_file() or path.stat().st_size > MAX_SNIFF_BYTES:
        return None
    with contextlib.suppress(InputError):
        return json_format(read_json(path))
    return None


def folder_files(root: Path) -> dict[str, list[Path]]:
    """{format: its JSON files} under ``root`` (symlinks out of it are not read), YOLO as its data.yaml."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.name == "data.yaml" or path.suffix.lower() == ".json":
            with contextlib.suppress(InputError):
                inside(root, path)
                kind = "yolo" if path.name == "data.yaml" else file_format(path)
                if kind:
                    found.setdefault(kind, []).append(path)
    return found


def detect_format(path: Path, insist: str | None = None) -> str:
    """The format of a JSON file or a folder; ``insist`` (``--format``) is taken as given for a folder (its
    reader then says what is missing) and checked for a file."""
    if path.is_dir():
        if insist:
            return insist
        kinds = folder_files(path)
        # a YOLO export may carry a COCO copy, not the reverse; nothing recognised: the COCO reader says what is missing
        found = next((kind for kind in ("yolo", "coco", "via", "label-studio") if kind in kinds), None)
        return found or detect_datumaro(path) or "coco"
    if path.suffix.lower() == ".xml":  # CVAT for images (one XML; its images in images/ beside it)
        kind = detect_datumaro(path)
        if insist and kind != insist:
            raise DatasetError(f"{path}: not a {insist} file" + (f" (it reads as {kind})" if kind else ""))
        if kind is None:
            raise DatasetError(f"{path}: not an XML this import reads (CVAT for images)")
        return kind
    if path.suffix.lower() != ".json" or path.stat().st_size > MAX_SNIFF_BYTES:
        raise DatasetError(f"{path}: not a dataset JSON this import reads (COCO, VIA, Label Studio), nor a folder or zip")
    try:
        kind = json_format(read_json(path))
    except InputError as exc:  # not JSON, nested too deep: the reader's one line
        raise DatasetError(str(exc)) from None
    if insist and kind != insist:
        raise DatasetError(f"{path}: not a {insist} file" + (f" (it reads as {kind})" if kind else ""))
    if kind is None:
        raise DatasetError(f"{path}: not a dataset JSON this import reads (COCO, VIA, Label Studio)")
    return kind
