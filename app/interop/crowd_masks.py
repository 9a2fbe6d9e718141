"""Which ``iscrowd: 1`` masks of an imported COCO file stay crowd regions, and which become editable instances.

COCO marks a region of many objects (a crowd) with ``iscrowd: 1`` and an RLE mask; the workspace keeps
such regions and refuses to edit them. datumaro, and so CVAT's "COCO 1.0" export, writes EVERY mask
as ``iscrowd: 1`` RLE when it exports masks (``segmentation_mode='mask'``): each is one object, and
importing them as crowd regions made a whole dataset uneditable. ``mode``:

* ``"auto"`` (default): editable when the file is such an export: every annotation is ``iscrowd: 1``
  and the file's ``info`` is datumaro's (only its keys contributor, date_created, description, url,
  version, year; or none). A file that mixes crowd and single objects (COCO itself) keeps its crowd
  regions.
* ``"keep"``: every ``iscrowd: 1`` mask stays a crowd region; ``"editable"``: none does.

The report says which was done and how to choose the other.
"""
from __future__ import annotations

from typing import Any

CROWD_MODES = ("auto", "keep", "editable")
DATUMARO_INFO_KEYS = {"contributor", "date_created", "description", "url", "version", "year"}


def datumaro_mask_export(info: Any, annotations: list[dict]) -> bool:
    """Whether a COCO file looks like datumaro's (CVAT's) mask-mode export: all crowd, datumaro's info."""
    info_ok = not info or (isinstance(info, dict) and set(info) <= DATUMARO_INFO_KEYS)
    return bool(annotations) and info_ok and all(ann["iscrowd"] for ann in annotations)


def crowd_ids(info: Any, images: list, mode: str) -> tuple[set[int], str | None]:
    """(ids of the annotations to store as crowd regions, a note for the report or None)."""
    if mode not in CROWD_MODES:
        raise ValueError(f"crowd mode must be one of {CROWD_MODES}, got {mode!r}")
    annotations = [ann for info_ in images for ann in info_.annotations]
    crowd = {ann["id"] for ann in annotations if ann["iscrowd"]}
    if not crowd:
        return crowd, None
    if mode == "editable":
        return set(), f"{len(crowd)} iscrowd masks imported as editable instances (--crowd editable)"
    if mode == "auto" and datumaro_mask_export(info, annotations):
        return set(), (f"{len(crowd)} iscrowd masks of a CVAT/datumaro mask export (it marks every mask crowd) "
                       "imported as editable instances; --crowd keep keeps them as crowd regions")
    return crowd, f"{len(crowd)} crowd regions kept as crowd (not editable; --crowd editable imports them as instances)"
