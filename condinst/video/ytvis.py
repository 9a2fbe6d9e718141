"""YouTube-VIS dataset and results JSON: reading and checking.

Dataset (YouTube-VIS 2019/2021/OVIS layout):

    videos       [{id, file_names: [frame paths, relative to the image folder], height, width, length}]
    annotations  [{id, video_id, category_id, iscrowd, segmentations: [RLE or polygons or null per frame],
                   bboxes: [[x, y, w, h] or null per frame], areas: [number or null per frame]}]
    categories   [{id, name}]

Results: [{video_id, category_id, score, segmentations: [RLE or null per frame]}].

`load_dataset` checks what evaluation and training rely on and raises `YtvisError` naming the entry:
the top-level keys, duplicate ids, unknown video or category ids, one segmentation per frame,
RLE sizes equal to the video's. Polygons are turned into RLEs when loaded.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import untrusted
from ..errors import UserError


class YtvisError(UserError, ValueError):
    """A YouTube-VIS dataset or results file that cannot be used, and why."""


@dataclass
class YtvisDataset:
    """A checked dataset: `videos` and `annotations` as in the JSON (segmentations as RLE or None),
    `categories` sorted by id, and the source file."""

    path: Path
    videos: list[dict]
    annotations: list[dict]
    categories: list[dict]

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def video_annotations(self, video_id: int) -> list[dict]:
        return [a for a in self.annotations if a["video_id"] == video_id]


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file from outside (`condinst.untrusted.read_json`: missing, not JSON, nested too deep is one line)."""
    try:
        return untrusted.read_json(path, what)
    except untrusted.InputError as e:
        raise YtvisError(str(e)) from None


def is_ytvis(data: Any) -> bool:
    """A parsed JSON that looks like a YouTube-VIS dataset (has `videos`, no `images`)."""
    return isinstance(data, dict) and "videos" in data and "images" not in data


def load_dataset(path: str | os.PathLike, data: dict | None = None) -> YtvisDataset:
    """Read and check a YouTube-VIS dataset JSON (`data`: the already parsed file)."""
    path = Path(path)
    data = read_json(path, "YouTube-VIS annotation") if data is None else data
    if not isinstance(data, dict):
        raise YtvisError(f"{path}: expected a YouTube-VIS object with 'videos', 'annotations' and 'categories'")
    for key in ("videos", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise YtvisError(f"{path}: missing the list {key!r} (a YouTube-VIS file has 'videos', 'annotations' "
                             "and 'categories')")
    categories = []
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or "name" not in c:
            raise YtvisError(f"{path}: categories[{k}]: needs an integer 'id' and a 'name'")
        categories.append({"id": c["id"], "name": str(c["name"])})
    if len({c["id"] for c in categories}) != len(categories):
        raise YtvisError(f"{path}: duplicate category ids")
    if not categories:
        raise YtvisError(f"{path}: no categories defined")
    videos: dict[int, dict] = {}
    for k, v in enumerate(data["videos"]):
        where = f"{path}: videos[{k}]"
        if not isinstance(v, dict) or not _is_int(v.get("id")):
            raise YtvisError(f"{where}: needs an integer 'id'")
        names = v.get("file_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise YtvisError(f"{where} (id {v['id']}): 'file_names' must be a non-empty list of frame paths")
        if not (_is_int(v.get("height")) and _is_int(v.get("width")) and v["height"] > 0 and v["width"] > 0):
            raise YtvisError(f"{where} (id {v['id']}): 'height' and 'width' must be positive integers")
        if v["id"] in videos:
            raise YtvisError(f"{where}: duplicate video id {v['id']}")
        videos[v["id"]] = dict(v, length=len(names))
    category_ids = {c["id"] for c in categories}
    annotations, seen = [], set()
    for k, a in enumerate(data["annotations"]):
        annotations.append(check_track(a, f"{path}: annotations[{k}]", videos, category_ids, seen, result=False))
    return YtvisDataset(path, list(videos.values()), annotations, sorted(categories, key=lambda c: c["id"]))


def load_results(path: str | os.PathLike, dataset: YtvisDataset) -> list[dict]:
    """Read and check a results JSON against `dataset` (video ids, category ids, frame counts, sizes)."""
    data = read_json(path, "results")
    if not isinstance(data, list):
        raise YtvisError(f"{path}: expected a list of results ({{video_id, category_id, score, segmentations}})")
    videos = {v["id"]: v for v in dataset.videos}
    return [check_track(r, f"{path}: results[{k}]", videos, set(dataset.category_ids), None, result=True)
            for k, r in enumerate(data)]


def check_track(entry: Any, where: str, videos: dict[int, dict], category_ids: set, seen: set | None,
                result: bool) -> dict:
    """One annotation (or result) checked, with its segmentations as RLE dicts or None."""
    from pycocotools import mask as mask_utils

    keys = ("video_id", "category_id", "segmentations") + (("score",) if result else ("id",))
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise YtvisError(f"{where}: needs the keys {', '.join(keys)}")
    if seen is not None:
        if entry["id"] in seen:
            raise YtvisError(f"{where}: duplicate annotation id {entry['id']}")
        seen.add(entry["id"])
    video = videos.get(entry["video_id"]) if _is_int(entry["video_id"]) else None
    if video is None:
        raise YtvisError(f"{where}: video_id {entry['video_id']!r} is not a video of the dataset")
    if entry["category_id"] not in category_ids:
        raise YtvisError(f"{where}: unknown category id {entry['category_id']!r}")
    if result and not (isinstance(entry["score"], (int, float)) and math.isfinite(entry["score"])):
        raise YtvisError(f"{where}: score must be a finite number")
    segs = entry["segmentations"]
    if not isinstance(segs, list) or len(segs) != video["length"]:
        got = len(segs) if isinstance(segs, list) else type(segs).__name__
        raise YtvisError(f"{where}: 'segmentations' needs one entry (RLE or null) per frame: video {video['id']} has "
                         f"{video['length']} frames, got {got}")
    h, w = video["height"], video["width"]
    rles = []
    for t, seg in enumerate(segs):
        if seg is None:
            rles.append(None)
            continue
        try:
            if isinstance(seg, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, *seg["size"])
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), str):
                rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
            else:
                raise TypeError("expected an RLE object, polygons or null")
            size = list(rle["size"])
            mask_utils.area(rle)
        except Exception as e:  # noqa: BLE001 - pycocotools raises plain exceptions
            raise YtvisError(f"{where}: frame {t}: unreadable segmentation ({e})") from None
        if size != [h, w]:
            raise YtvisError(f"{where}: frame {t}: mask size {size} (h, w) differs from the video's [{h}, {w}]")
        rles.append(rle)
    out = dict(entry, segmentations=rles)
    out.setdefault("iscrowd", 0)
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
