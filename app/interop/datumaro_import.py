"""Datasets in formats datumaro reads (CVAT XML, LabelMe, Pascal VOC, Cityscapes, Open Images, Segment Anything),
turned into one COCO instances file for the checked import path of `app.interop.imports`.

    kind = detect_datumaro(Path("export/"))                    # "cvat", "labelme", ... or None
    coco, skipped, notes = datumaro_to_coco(Path("export/"), kind, workspace, scratch / "dm.json")

Only datumaro's own importers read the files (`Dataset.import_from`); this module turns its in-memory
dataset into COCO: polygons stay polygons (rasterised later by pycocotools like any COCO polygon), masks
become exact RLE, a box that belongs to a mask or polygon (the same group, as SAM and Open Images write
them) is dropped, a lone box becomes a rectangle (said in the notes). A mask with ``is_crowd`` set is a
crowd region. SAM names no classes: its masks get the class ``object`` (``--map-category object=NAME``);
a label index with no name in the file is refused.

Hostile input: before datumaro sees the folder, every entry under it must resolve inside it (a symlink out
of it is one line, nothing is read) and there are at most `MAX_FILES`. Every image path datumaro gives
must be a file inside the folder; masks must have the image's size; polygon coordinates must be finite
(the training loader then checks them against the image). A datumaro exception is one line naming the
format; with ``skip_bad`` datumaro's per-item and per-annotation errors, and its warnings about what it
left out, are lines of the report instead.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import PIL.Image
from pycocotools import mask as mask_utils

from app.interop.import_sources import IMAGE_SUFFIXES
from app.store import storage
from app.store.ingest import oriented_size
from app.store.workspace import Workspace
from condinst.untrusted import is_inside
from training.data import DatasetError
from training.entry_checks import compressed_rle_runs

# our --format name -> datumaro's importer name
DATUMARO_FORMATS = {"cvat": "cvat", "labelme": "label_me", "voc": "voc_instance_segmentation",
                    "cityscapes": "cityscapes", "open-images": "open_images", "sam": "segment_anything"}
MAX_FILES = 1_000_000
DEFAULT_CLASS = "object"


def detect_datumaro(path: Path) -> str | None:
    """The datumaro format (our name) of a folder or an XML file, or None; datumaro's own detectors decide."""
    from datumaro.components.environment import Environment
    from datumaro.components.format_detection import detect_dataset_format

    env = Environment()
    names = {dm: ours for ours, dm in DATUMARO_FORMATS.items()}
    if path.is_file():  # datumaro detects folders; of our formats only CVAT is one file (an XML with <annotations>)
        with contextlib.suppress(OSError), path.open("rb") as head:
            return "cvat" if path.suffix.lower() == ".xml" and b"<annotations" in head.read(4096) else None
        return None
    try:
        found = detect_dataset_format([(dm, env.importers[dm].detect) for dm in names], str(path))
    except Exception:  # noqa: BLE001 - a detector that trips over hostile input: not this format
        return None
    return names[found[0].name] if found else None


def _check_tree(root: Path, max_pixels: int) -> None:
    """Before datumaro reads anything: every entry under ``root`` resolves inside it, there are not too many,
    and no picture (image or mask) declares more than ``max_pixels`` in its header."""
    count = 0
    for entry in root.rglob("*"):
        count += 1
        if count > MAX_FILES:
            raise DatasetError(f"{root}: more than {MAX_FILES} files")
        if not is_inside(root, entry):
            raise DatasetError(f"{entry.relative_to(root)}: points outside the dataset folder (a link out of it)")
        if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            with contextlib.suppress(OSError, PIL.UnidentifiedImageError), PIL.Image.open(entry) as picture:
                width, height = picture.size  # the header only
                if width * height > max_pixels:
                    raise DatasetError(f"{entry.relative_to(root)}: {width}x{height} pixels, more than the "
                                       f"{max_pixels} allowed")


def _image_meta(root: Path) -> dict[str, tuple[int, int]]:
    """{item id: (height, width)} of an Open Images folder's images/<subset>/ files: datumaro's Open Images
    importer drops every mask of an image whose size it has not cached (it asks ``has_size``)."""
    meta = {}
    for subset in sorted(p for p in (root / "images").glob("*") if p.is_dir()):
        for path in sorted(subset.rglob("*")):
            if path.is_file():
                width, height = oriented_size(path)
                meta[path.relative_to(subset).with_suffix("").as_posix()] = (height, width)
    return meta


class _Collect(logging.Handler):
    """datumaro's warnings (what it left out) as lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"datumaro: {record.getMessage()}"[:300])


@contextlib.contextmanager
def _warnings_collected() -> Iterator[_Collect]:
    handler, logger = _Collect(), logging.getLogger()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _policy(skip_bad: bool, lines: list[str]):
    from datumaro.components.contexts.importer import ImportErrorPolicy

    class Policy(ImportErrorPolicy):  # datumaro's hook: return = skip the item / annotation
        def _handle_item_error(self, error) -> None:
            self._keep(error)

        def _handle_annotation_error(self, error) -> None:
            self._keep(error)

        def _keep(self, error) -> None:
            if not skip_bad:
                self.fail(error)
            lines.append(f"datumaro: {error} ({error.__cause__})"[:300])

    return Policy()


def _load(path: Path, kind: str, skip_bad: bool, skipped: list[str]) -> list:
    """datumaro's items of the dataset (read whole, so that its errors surface here) and its label names."""
    from datumaro.components.annotation import AnnotationType
    from datumaro.components.dataset import Dataset

    extra = {"image_meta": _image_meta(path)} if kind == "open-images" and path.is_dir() else {}
    try:
        dataset = Dataset.import_from(str(path), DATUMARO_FORMATS[kind], error_policy=_policy(skip_bad, skipped),
                                      **extra)
        items = list(dataset)
        labels = dataset.categories().get(AnnotationType.label)
    except Exception as exc:  # noqa: BLE001 - datumaro raises anything on a bad file: one line
        cause = exc.__cause__ or exc
        text = str(cause).splitlines()[0][:200] if str(cause) else ""
        raise DatasetError(f"{path}: datumaro could not read it as {kind} ({type(cause).__name__}: {text})") from None
    return items, [label.name for label in labels] if labels is not None else []


def _polygon(points: Any, where: str) -> list[float]:
    values = [float(v) for v in points]
    if len(values) < 6 or len(values) % 2 or not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{where}: a polygon needs at least 3 points of finite coordinates")
    return values


def _rle(rle: Any, what: str, height: int, width: int) -> dict:
    """A compressed RLE of datumaro's, checked (size = the image's, counts valid and summing to it)."""
    counts = rle.get("counts") if isinstance(rle, dict) else None
    if not isinstance(rle, dict) or list(rle.get("size", [])) != [height, width] or \
            not isinstance(counts, (str, bytes)):
        raise DatasetError(f"{what}: RLE must be compressed counts of the image's size {height}x{width}")
    runs = compressed_rle_runs(counts)
    if isinstance(runs, str) or int(runs.sum()) != height * width:
        raise DatasetError(f"{what}: RLE counts invalid ({runs if isinstance(runs, str) else 'wrong total'})")
    if runs[1::2].sum() == 0:
        raise DatasetError(f"{what}: empty mask")
    counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
    return {"size": [height, width], "counts": counts}


def _shapes(item, where: str, height: int, width: int) -> tuple[list[tuple[Any, dict]], int]:
    """([(label, COCO segmentation fields)], boxes made rectangles) of one item."""
    grouped = {a.group for a in item.annotations if a.type.name in ("polygon", "mask") and a.group}
    shapes, boxes = [], 0
    for k, ann in enumerate(item.annotations):
        what = f"{where}: annotation {k}"
        kind = ann.type.name
        if kind == "polygon":
            polygon = _polygon(ann.points, what)
            xs, ys = polygon[0::2], polygon[1::2]
            shapes.append((ann.label, {"segmentation": [polygon], "iscrowd": 0,
                                       "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]}))
        elif kind == "mask" and hasattr(ann, "rle"):  # SAM: RLE as in the file, checked before pycocotools sees it
            shapes.append((ann.label, {"segmentation": _rle(ann.rle, what, height, width),
                                       "iscrowd": int(bool(ann.attributes.get("is_crowd")))}))
        elif kind == "mask":
            try:
                mask = np.asarray(ann.image).astype(bool)  # datumaro decodes a PNG (its size checked by _check_tree)
            except Exception as exc:  # noqa: BLE001 - datumaro's lazy decoding of a bad file
                raise DatasetError(f"{what}: mask unreadable ({type(exc).__name__}: {str(exc)[:100]})") from None
            if mask.shape != (height, width):
                raise DatasetError(f"{what}: mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
            if not mask.any():
                raise DatasetError(f"{what}: empty mask")
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            crowd = int(bool(ann.attributes.get("is_crowd")))
            shapes.append((ann.label, {"segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                                       "iscrowd": crowd, "bbox": mask_utils.toBbox(rle).tolist()}))
        elif kind == "bbox" and not (ann.group and ann.group in grouped):
            x, y, w, h = (float(v) for v in ann.get_bbox())
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                raise DatasetError(f"{what}: box must have finite coordinates and a positive size")
            shapes.append((ann.label, {"segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "iscrowd": 0,
                                       "bbox": [x, y, w, h]}))
            boxes += 1
    return shapes, boxes


def datumaro_to_coco(path: Path, kind: str, workspace: Workspace, out: Path,
                     skip_bad: bool = False) -> tuple[tuple[Path, Path], list[str], list[str]]:
    """Read a ``kind`` dataset (folder, or a CVAT XML file) with datumaro and write it as ONE COCO file ``out``,
    file_names relative to the dataset folder, ids after the workspace's. Returns ((out, that folder),
    lines of what was left out, notes)."""
    root = path if path.is_dir() else path.parent
    _check_tree(root, workspace.max_pixels)
    skipped: list[str] = []

    def bad(message: str) -> None:
        if not skip_bad:
            raise DatasetError(message)
        skipped.append(message)

    with _warnings_collected() as warned:
        items, names = _load(path, kind, skip_bad, skipped)
    if warned.lines and not skip_bad:
        raise DatasetError(f"{path}: {warned.lines[0]} (--skip-bad imports the rest)")
    skipped += warned.lines
    entries, boxes = [], 0
    for item in items:
        where = f"{item.subset}/{item.id}"
        try:
            media = getattr(item.media, "path", None)
            if not media or not is_inside(root, Path(media)) or not Path(media).is_file():
                raise DatasetError(f"{where}: image {media!r} is not a file inside {root}")
            width, height = oriented_size(Path(media))
            shapes, boxed = _shapes(item, where, height, width)
            for label, fields in shapes:
                if "bbox" not in fields:  # a checked RLE: its box from pycocotools
                    fields["bbox"] = mask_utils.toBbox(dict(fields["segmentation"])).tolist()
            for label, _ in shapes:
                if label is not None and not 0 <= label < len(names):
                    raise DatasetError(f"{where}: label index {label} has no name in the file")
        except DatasetError as exc:
            bad(str(exc))
            continue
        boxes += boxed
        entries.append((Path(media).resolve().relative_to(root.resolve()), width, height, shapes))
    if not entries:
        raise DatasetError(f"{path}: no images to import (read as {kind})")
    used = sorted({names[label] if label is not None else DEFAULT_CLASS for *_, shapes in entries
                   for label, _ in shapes})
    known = {c.name: c.id for c in workspace.categories()}
    next_id, category = max([0, *known.values()]) + 1, {}
    for name in used:
        category[name] = known.get(name, next_id)
        next_id += name not in known
    with workspace.db.read() as conn:
        image_id, ann_id = storage.last_ids(conn)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": i, "name": n}
                                                                             for n, i in category.items()]}
    for file_name, width, height, shapes in entries:
        image_id += 1
        coco["images"].append({"id": image_id, "file_name": str(file_name), "width": width, "height": height})
        for label, fields in shapes:
            ann_id += 1
            name = names[label] if label is not None else DEFAULT_CLASS
            coco["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": category[name],
                                        "area": 0.0, **fields})
    out.write_text(json.dumps(coco), encoding="utf-8")
    notes = [f"read as {kind} by datumaro"] + ([f"{boxes} boxes without a mask imported as rectangles"]
                                               if boxes else [])
    return (out, root), skipped, notes
