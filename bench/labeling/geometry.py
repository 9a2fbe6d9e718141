"""Mask geometry of the scripted annotator: IoU tables, one-to-one matches, brush drags, score entropy."""
from __future__ import annotations

import numpy as np


def ious(gts: list[np.ndarray], instances) -> np.ndarray:
    """(objects, instances) mask IoU."""
    from pycocotools import mask as mask_utils

    if not gts or not instances:
        return np.zeros((len(gts), len(instances)))
    g = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in gts]
    d = [{"size": list(i.rle["size"]), "counts": i.rle["counts"]} for i in instances]
    return np.asarray(mask_utils.iou(d, g, [0] * len(g))).reshape(len(d), len(g)).T


def matches(ious_: np.ndarray, threshold) -> dict[int, int]:
    """Greedy one-to-one object -> instance column at IoU >= threshold (one value, or one per object),
    highest IoU first."""
    reach = ious_ >= np.asarray(threshold, np.float64).reshape(-1, 1)
    pairs = sorted(((ious_[g, i], g, i) for g, i in zip(*np.nonzero(reach))), reverse=True)
    out, used = {}, set()
    for _, g, i in pairs:
        if g not in out and i not in used:
            out[int(g)], used = int(i), used | {int(i)}
    return out


def stroke_along(region: np.ndarray, centre: tuple[float, float]) -> tuple[list[list[int]], int] | None:
    """(points, width) of one brush drag along the ridge of an error region (ordered around `centre`)."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    if count < 2:
        return None
    part = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    dist = cv2.distanceTransform(np.pad(part, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    top = float(dist.max())
    width = int(min(max(2 * round(top) + 1, 3), 61))
    ys, xs = np.nonzero(dist >= max(1.0, 0.7 * top))
    if not len(xs):
        return None
    order = np.argsort(np.arctan2(ys - centre[1], xs - centre[0]))
    pts = np.stack([xs[order], ys[order]], 1)
    gaps = np.flatnonzero(np.abs(np.diff(pts, axis=0)).max(axis=1) > width)  # break into contiguous runs
    runs = np.split(pts, gaps + 1)
    run = max(runs, key=len)
    step = max(1, width // 3)
    points = run[::step].tolist() + ([run[-1].tolist()] if len(run) > 1 else [])
    return [[int(x), int(y)] for x, y in points], width


def entropy(scores) -> float:
    s = np.clip(np.asarray([v for v in scores if v is not None], float), 1e-6, 1 - 1e-6)
    return float((-(s * np.log(s) + (1 - s) * np.log(1 - s))).sum())
