"""Resolve overlaps: among instances whose masks overlap by >= an IoU, keep one and say which to remove.

A model often reports one object twice (two classes, or two FPN locations): an annotator removes
the duplicates with one action instead of selecting and deleting each. Pure logic, no UI, no
database:

    removals = resolve_overlaps(overlap_items(instances), min_iou=0.6)
    for r in removals: ...delete r.remove (it overlapped r.kept by r.iou)...

Who is kept: an instance a person made or edited always (their work is never removed, even when
two of them overlap); among model instances the higher score, then the older (smaller) id. Each
candidate is compared with the instances already kept, best first (greedy, like NMS), so the
result does not depend on the input order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

DEFAULT_MIN_IOU = 0.6


@dataclass(frozen=True)
class OverlapItem:
    """One instance as the rule sees it: id, COCO RLE ({"size", "counts"}), score (None: made by a
    person), and whether a person made or edited it."""

    id: int
    rle: dict
    score: float | None
    edited: bool


@dataclass(frozen=True)
class Removal:
    """`remove` overlaps `kept` (which stays) with mask IoU `iou`."""

    remove: int
    kept: int
    iou: float


def overlap_items(instances: Iterable[Any]) -> list[OverlapItem]:
    """OverlapItems of workspace instances (objects with id, rle, score, source, user_edited)."""
    return [OverlapItem(id=int(inst.id), rle=inst.rle, score=inst.score,
                        edited=bool(inst.user_edited) or inst.source != "model" or inst.score is None)
            for inst in instances]


def _priority(item: OverlapItem) -> tuple:
    """Sort key, best first: person-made/edited, then score, then the older id."""
    score = float(item.score) if item.score is not None and np.isfinite(item.score) else 1.0
    return (not item.edited, -score, item.id)


def resolve_overlaps(items: Sequence[OverlapItem], min_iou: float = DEFAULT_MIN_IOU) -> list[Removal]:
    """The instances to remove: each model instance overlapping an instance kept before it by >= min_iou.

    ValueError if `min_iou` is not in (0, 1] or the masks do not share one image size.
    """
    min_iou = float(min_iou)
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"The overlap IoU must be in (0, 1], got {min_iou}.")
    if len({tuple(int(v) for v in item.rle["size"]) for item in items}) > 1:
        raise ValueError("The instances of one image must share its size.")
    ordered = sorted(items, key=_priority)
    if len(ordered) < 2:
        return []
    rles = [{"size": list(item.rle["size"]), "counts": item.rle["counts"]} for item in ordered]
    ious = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)), dtype=np.float64).reshape(len(rles), len(rles))
    kept: list[int] = []  # indices into `ordered`
    removals = []
    for k, item in enumerate(ordered):
        if kept and not item.edited:
            best = max(kept, key=lambda j: ious[k, j])
            if ious[k, best] >= min_iou:
                removals.append(Removal(remove=item.id, kept=ordered[best].id, iou=float(ious[k, best])))
                continue
        kept.append(k)
    return removals
