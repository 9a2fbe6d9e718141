"""The rule for storing a model's predictions on an image (first run and re-runs) without losing work.

  * The model's first predictions are the image's starting state, not an undo step.
  * A re-run never touches a reviewed image, never replaces an instance the user created, edited, hid
    or deleted, and does not add a prediction on top of one of those (mask IoU >= `OVERLAP_IOU`); a
    model instance it predicts again (same class, mask IoU >= `SAME_IOU`) is kept as it is. The
    other untouched model instances are replaced (soft-deleted), all as one undo step. The
    `PredictionReport` says what was skipped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from app.store import history, storage
from app.store.db import now
from app.errors import WorkspaceError
from app.store.masks import EncodedMask
from app.store.records import Instance, Prediction, PredictionReport

OVERLAP_IOU = 0.5
SAME_IOU = 0.95


def encode_predictions(predictions: Sequence[Prediction], height: int, width: int
                       ) -> tuple[list[Prediction], list[EncodedMask]]:
    """(Predictions, their encoded masks) checked against an image size, before a write transaction."""
    try:
        items = [Prediction(*p) for p in predictions]
    except TypeError:
        raise WorkspaceError("Each prediction must be (category_id, score, mask, meta or None)") from None
    return items, [storage.encode(p.mask, height, width) for p in items]


def store_predictions(conn, image_id: int, items: list[Prediction], encoded: list[EncodedMask], model: str,
                      history_limit: int) -> PredictionReport:
    """Store a model's (encoded) predictions for one image inside the caller's write transaction."""
    report = PredictionReport()
    record = storage.image_record(conn, image_id)
    if record.reviewed:
        report.skipped_reviewed = True
        return report
    current = storage.instances(conn, record.id, include_deleted=True)
    first = record.segmented_by is None and not current
    kept = [i for i in current if i.touched]
    untouched = [i for i in current if not i.touched and not i.deleted]
    kept_rles = [i.rle for i in kept]
    changes, same = [], set()
    for item, enc in zip(items, encoded):
        rle = {"size": [record.height, record.width], "counts": enc.counts}
        twin = same_prediction(rle, item.category_id, untouched, same)
        if twin is not None:  # the model predicts what is already there: keep the stored one (even on top
            same.add(twin)    # of a person's instance: a re-run with the same model changes nothing)
            continue
        if kept_rles and float(np.max(mask_utils.iou([rle], kept_rles, [0] * len(kept_rles)))) >= OVERLAP_IOU:
            report.kept_overlap += 1
            continue
        new_id, change = storage.insert_instance(conn, record.id, item.category_id, enc, "model", item.score,
                                                 item.meta)
        report.added.append(new_id)
        changes.append(change)
    replaced = [history.update(conn, i.id, {"deleted": 1}) for i in untouched if i.id not in same]
    report.replaced = len(replaced)
    changes = replaced + changes
    conn.execute("UPDATE images SET segmented_by = ?, updated_at = ? WHERE id = ?", (model, now(), record.id))
    if not first:
        history.push(conn, record.id, "re-run model", changes, history_limit)
    return report


def same_prediction(rle: dict, category_id: int, candidates: list[Instance], taken: set) -> int | None:
    """Id of an untouched stored prediction of the same class with mask IoU >= `SAME_IOU`, if any."""
    for inst in candidates:
        if inst.id not in taken and inst.category_id == category_id and \
                float(mask_utils.iou([rle], [inst.rle], [0])[0, 0]) >= SAME_IOU:
            return inst.id
    return None
