"""What an import reads besides a plain COCO JSON + image folder: a YOLO segmentation dataset and zips.

Each is turned into a COCO instances file in a scratch folder inside the workspace, so that every
import goes through the one checked, all-or-nothing path of `app.interop.imports` (the training loader's
checks, one transaction). Nothing here writes to the workspace database.

YOLO segmentation, Ultralytics layout (what `app.interop.formats.export_yolo`, Ultralytics and Roboflow write)::

    data.yaml                   names: [a, b] or {0: a, 1: b} (our exports also keep category_ids)
    images/<subset>/<file>      or <subset>/images/<file> (Roboflow); any folder named images
    labels/<subset>/<stem>.txt  one polygon per line: class x1 y1 x2 y2 ... normalised to [0, 1]

Each line becomes one annotation (YOLO has no instance ids: an object written as several polygons
comes back as several instances). Vertices are scaled to pixels and rasterised by pycocotools like
any COCO polygon, so holes are filled. Class names come from data.yaml; a name the workspace knows
keeps the workspace's category id. supervision's ``DetectionDataset.from_yolo`` is not used: it rounds
vertices to whole pixels and fills them with OpenCV (not the pycocotools rule every other polygon here
follows), and stops at the first bad line without naming it. A bad line (class not in names, odd
coordinate count, a coordinate outside [0, 1], fewer than 3 points) is one message naming file and
line; ``skip_bad`` leaves it out.

Every path read stays inside the dataset (`condinst.untrusted.inside`): an image, label file or
data.yaml that is a symlink out of the folder is refused (one line naming it; ``skip_bad`` leaves an
image out), and a COCO ``file_name`` that climbs out of the zip ('..', absolute) is refused by the
training loader's check. zipfile itself drops '..' and absolute member names and writes symlink
members as plain files. JSON and YAML are read with bounded nesting (`condinst.untrusted.read_json`).

A zip (CVAT / datumaro, Roboflow, or our own export) is extracted into the scratch folder; its COCO
files are ``annotations/instances_<subset>.json`` (images in ``images/<subset>/`` or ``images/``) or any
other COCO JSON (images beside it or in ``images/``). Several files (a train/val split) are merged
into one import when their ids do not clash. A zip holding ``data.yaml`` is read as YOLO.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from app.store import storage
from app.store.ingest import oriented_size
from app.store.workspace import Workspace
from condinst.preprocess import IMAGE_SUFFIXES
from condinst.untrusted import InputError, inside, is_inside, parse_json, read_json
from training.data import DatasetError

MAX_ZIP_BYTES = 20 * 2**30
MAX_YAML_BYTES = 2**20


@contextlib.contextmanager
def scratch_dir(workspace: Workspace) -> Iterator[Path]:
    """A temporary folder in this process's staging of the workspace (`app.store.staging`), removed afterwards;
    a killed import's is removed by the next start's sweep, a running import's never."""
    with workspace.stage.folder("import") as folder:
        yield folder


# ---- zips -------------------------------------------------------------------------------------------
def extract_zip(path: Path, into: Path) -> Path:
    """Extract a dataset zip into ``into`` (checked: a zip, fits on disk); returns ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
            free = shutil.disk_usage(into).free
            if total > min(MAX_ZIP_BYTES, free):
                raise DatasetError(f"{path}: unpacks to {total / 2**30:.1f} GB, more than the "
                                   f"{min(MAX_ZIP_BYTES, free) / 2**30:.1f} GB allowed here")
            archive.extractall(into)  # zipfile drops absolute paths and '..' components
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise DatasetError(f"{path}: not a readable zip file ({exc})") from None
    return into


def is_yolo(root: Path) -> bool:
    return any(root.rglob("data.yaml"))


def _coco_files(root: Path) -> list[Path]:
    """The COCO instances files of an extracted zip: annotations/*.json first, else any COCO-looking JSON."""
    preferred = sorted(p for p in root.rglob("*.json") if p.parent.name == "annotations" and
                       not p.name.startswith(("person_keypoints", "captions")))
    if preferred:
        return preferred
    found = []
    for candidate in sorted(root.rglob("*.json")):
        with contextlib.suppress(InputError):
            data = read_json(inside(root, candidate))
            if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
                found.append(candidate)
    return found


def _image_folder(root: Path, ann: Path, data: dict) -> Path:
    """The folder a COCO file's file_names are relative to, among the places exports put them."""
    subset = ann.stem.removeprefix("instances_")
    base = ann.parent.parent if ann.parent.name == "annotations" else ann.parent
    candidates = [base / "images" / subset, base / "images", base, ann.parent, ann.parent / "images"]
    names = [str(img.get("file_name", "")) for img in data.get("images", [])[:1] if isinstance(img, dict)]
    for folder in candidates:  # a name that climbs out of the zip is not looked at (the loader refuses it)
        if folder.is_dir() and all(is_inside(root, folder / name) and _is_file(folder / name) for name in names):
            return folder
    looked = ", ".join(str(c.relative_to(root)) for c in candidates)
    raise DatasetError(f"{ann.relative_to(root)}: its images ({names[0] if names else '?'}) are not in the zip "
                       f"(looked in {looked})")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system
        return False


def coco_from_zip(root: Path, out: Path) -> Path:
    """The one COCO file to import from an extracted zip (several are merged; file_names made relative
    to ``root``); written to ``out``. DatasetError if there is none or they clash."""
    files = _coco_files(root)
    if not files:
        raise DatasetError("the zip holds no COCO instances JSON (looked for annotations/*.json and any JSON "
                           "with images, annotations and categories)")
    merged: dict[str, Any] = {"images": [], "annotations": [], "categories": None}
    seen: dict[str, dict[Any, str]] = {"images": {}, "annotations": {}}
    for ann in files:
        try:
            data = parse_json(inside(root, ann).read_bytes(), str(ann.relative_to(root)))
        except InputError as exc:
            raise DatasetError(str(exc)) from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise DatasetError(f"{ann.relative_to(root)}: not a COCO instances file "
                               "(needs lists images, annotations, categories)")
        if merged["categories"] is not None and data["categories"] != merged["categories"]:
            raise DatasetError(f"{ann.relative_to(root)}: its categories differ from {files[0].relative_to(root)}; "
                               "import the files one at a time")
        merged["categories"] = data["categories"]
        merged.setdefault("info", data.get("info", {}))  # app.interop.crowd_masks reads whose export it is
        folder = _image_folder(root, ann, data)
        for key in ("images", "annotations"):
            for entry in data[key]:
                if isinstance(entry, dict) and entry.get("id") in seen[key]:
                    raise DatasetError(f"{ann.relative_to(root)}: {key[:-1]} id {entry['id']} is also used in "
                                       f"{seen[key][entry['id']]}; import the files one at a time")
                if isinstance(entry, dict):
                    seen[key][entry.get("id")] = ann.name
                    name = entry.get("file_name")
                    if key == "images" and isinstance(name, str) and name:  # the loader checks it stays inside
                        entry["file_name"] = str(folder.relative_to(root) / name)
                merged[key].append(entry)
    out.write_text(json.dumps(merged), encoding="utf-8")
    return out


# ---- YOLO -------------------------------------------------------------------------------------------
def _names(data_yaml: Path) -> tuple[list[str], list[int] | None]:
    """Class names in index order (and our exports' category ids) from data.yaml."""
    if data_yaml.stat().st_size > MAX_YAML_BYTES:
        raise DatasetError(f"{data_yaml}: {data_yaml.stat().st_size} bytes, more than a data.yaml needs "
                           f"({MAX_YAML_BYTES} at most)")
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{data_yaml}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise DatasetError(f"{data_yaml}: YAML nested too deeply") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names) and \
            sorted(names) == list(range(len(names))):
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DatasetError(f"{data_yaml}: 'names' must be a list of class names or a mapping 0..K-1 -> name")
    ids = data.get("category_ids")
    if isinstance(ids, dict) and all(isinstance(k, int) for k in ids) and sorted(ids) == list(range(len(names))) \
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**63 for v in ids.values()):
        ids = [ids[k] for k in range(len(names))]
    else:  # absent, or not positive 64-bit ids: the workspace chooses them
        ids = None
    return [str(n) for n in names], ids


def _label_path(image: Path, root: Path) -> Path:
    """labels/.../<stem>.txt for images/.../<file> (the last 'images' folder becomes 'labels')."""
    parts = list(image.relative_to(root).parts)
    k = len(parts) - 1 - parts[::-1].index("images")
    parts[k] = "labels"
    return (root.joinpath(*parts)).with_suffix(".txt")


def _polygon(line: str, num_classes: int, where: str) -> tuple[int, list[float]]:
    """(class index, normalised [x1, y1, ...]) of one label line; DatasetError naming what is wrong."""
    tokens = line.split()
    try:
        cls, values = float(tokens[0]), [float(t) for t in tokens[1:]]
    except ValueError:
        raise DatasetError(f"{where}: not numbers ({line[:60]!r})") from None
    if not math.isfinite(cls) or not cls.is_integer() or not 0 <= cls < num_classes:
        raise DatasetError(f"{where}: class {tokens[0]} is not in data.yaml names (0..{num_classes - 1})")
    if len(values) == 4:
        raise DatasetError(f"{where}: a box (class x y w h), not a polygon: a detection label, not segmentation")
    if len(values) % 2:
        raise DatasetError(f"{where}: odd number of coordinates ({len(values)}); expected x y pairs")
    if len(values) < 6:
        raise DatasetError(f"{where}: {len(values) // 2} points; a polygon needs at least 3")
    outside = [v for v in values if not 0.0 <= v <= 1.0]
    if outside:
        raise DatasetError(f"{where}: coordinate {outside[0]:g} outside [0, 1] (coordinates are normalised)")
    return int(cls), values


def yolo_to_coco(root: Path, workspace: Workspace, out: Path, skip_bad: bool = False) -> tuple[Path, list[str]]:
    """Write a YOLO segmentation dataset under ``root`` as a COCO file ``out`` (file_names relative to
    ``root``; image and annotation ids after the workspace's). Returns (out, messages of skipped lines)."""
    yamls = sorted(root.rglob("data.yaml"), key=lambda p: len(p.parts))
    if not yamls:
        raise DatasetError(f"{root}: no data.yaml (a YOLO dataset names its classes there)")
    if not is_inside(root, yamls[0]):
        raise DatasetError(f"{yamls[0].relative_to(root)}: points outside the dataset folder (a link out of it)")
    names, ids = _names(yamls[0])
    known = {c.name: c.id for c in workspace.categories()}
    next_id = max([0, *known.values(), *(ids or [])]) + 1
    if ids is None:
        ids = []
        for name in names:
            ids.append(known.get(name, next_id))
            next_id += name not in known
    with workspace.db.read() as conn:
        image_id, ann_id = storage.last_ids(conn)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and "images" in p.relative_to(root).parts[:-1])
    if not images:
        raise DatasetError(f"{root}: no images in an images/ folder")
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i, "name": n} for i, n in zip(ids, names)]}
    skipped: list[str] = []
    for path in images:
        label = _label_path(path, root)
        outside = next((p for p in (path, label) if not is_inside(root, p)), None)
        if outside is not None:  # a symlink out of the dataset: never opened
            message = f"{outside.relative_to(root)}: points outside the dataset folder (a link out of it)"
            if not skip_bad:
                raise DatasetError(message)
            skipped.append(message)
            continue
        width, height = oriented_size(path)
        image_id += 1
        relative = str(path.relative_to(root))
        coco["images"].append({"id": image_id, "file_name": relative, "width": width, "height": height})
        lines = label.read_text(encoding="utf-8", errors="replace").splitlines() if label.is_file() else []
        label_name = label.relative_to(root)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                cls, values = _polygon(line, len(names), f"{label_name} line {number}")
            except DatasetError as exc:
                if not skip_bad:
                    raise
                skipped.append(str(exc))
                continue
            xs, ys = [v * width for v in values[0::2]], [v * height for v in values[1::2]]
            polygon = [c for xy in zip(xs, ys) for c in xy]
            ann_id += 1
            coco["annotations"].append({
                "id": ann_id, "image_id": image_id, "category_id": ids[cls], "segmentation": [polygon],
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "area": 0.0, "iscrowd": 0})
    out.write_text(json.dumps(coco), encoding="utf-8")
    return out, skipped
