"""Label QA: run the model over labelled images and list where labels and model disagree, worst first.

    report = run_qa(workspace, session, score_threshold=0.5)      # session: app.model.session.ModelSession
    python -m app qa --workspace WS --out report.json [--weights W] [--score 0.5]

The labels of an image are its live instances a person made (imported labels, drawn or edited
instances) and, once the image is reviewed, every instance the reviewer kept: model instances too (those
its frozen review threshold shows, `ImageRecord.threshold`). Images with labels, and every reviewed image,
are run through the app's one inference path (`ModelSession.predictions`). A prediction that matches an
instance a person deleted (IoU >= 0.5) was rejected already and is never listed again. Model classes are matched
to workspace classes by name; labels of classes the model does not know are not judged (counted).
Per image, with IoU the mask IoU and "inside" the share of a prediction's mask within a label's:

* ``missing_label``: a prediction with score >= ``score_threshold`` that overlaps no label (IoU < 0.5,
  not mostly inside one, not inside a crowd region). Severity = score x (1 - best IoU).
* ``unmatched_label``: a label no prediction finds (IoU < 0.5 with every prediction, any score).
  Severity = 0.8 x (1 - best IoU): the model may just be weak there, so it ranks below confident cases.
* ``class_mismatch``: the label's best prediction has IoU >= 0.7, score >= ``score_threshold`` and
  another class, and no prediction of the label's class finds it. Severity = score x IoU.
* ``loose_label``: the label's best prediction lies inside it (inside >= 0.8) with score >=
  ``score_threshold``, and the label is >= 1.5x its area with IoU < 0.8. Severity = score x (1 - IoU).

Entries are sorted by severity (highest first); each also names it (``level``): ``high`` (>= 0.5),
``medium`` (>= 0.25) or ``low``. Nothing is written to the workspace.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from pycocotools import mask as mask_utils

from app.errors import AppError
from app.store.records import ImageRecord
from app.store.workspace import Instance, Workspace

MATCH_IOU = 0.5
CLASS_IOU = 0.7
INSIDE = 0.8
LOOSE_RATIO = 1.5
LOOSE_MAX_IOU = 0.8
KINDS = ("missing_label", "unmatched_label", "class_mismatch", "loose_label")
LEVELS = ((0.5, "high"), (0.25, "medium"), (0.0, "low"))  # named severities, worst first


def severity_level(severity: float) -> str:
    """The name of a severity: high, medium or low."""
    return next(name for floor, name in LEVELS if severity >= floor)


class QAError(AppError):
    """QA cannot run (no labelled images, no class in common with the model)."""


@dataclass
class QAEntry:
    """One disagreement. ``box`` is x, y, w, h in image pixels (the prediction's, else the label's)."""

    kind: str
    image_id: int
    file_name: str
    instance_id: int | None
    label_class: str | None
    predicted_class: str | None
    score: float | None
    box: list[float]
    iou: float
    severity: float
    reason: str
    level: str = ""  # severity_level(severity), filled in

    def __post_init__(self):
        self.level = severity_level(self.severity)


@dataclass
class QAReport:
    model: str
    score_threshold: float
    images: int = 0
    labels: int = 0
    predictions: int = 0
    rejected: int = 0  # predictions matching an instance a person deleted: not listed
    unknown_class_labels: int = 0
    seconds: float = 0.0
    entries: list[QAEntry] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {kind: sum(e.kind == kind for e in self.entries) for kind in KINDS}

    def to_dict(self) -> dict:
        return {"model": self.model, "score_threshold": self.score_threshold, "images": self.images,
                "labels": self.labels, "predictions": self.predictions, "rejected": self.rejected,
                "unknown_class_labels": self.unknown_class_labels, "seconds": round(self.seconds, 2),
                "counts": self.counts(), "entries": [asdict(e) for e in self.entries]}

    def summary(self) -> str:
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        return (f"QA of {self.images} images ({self.labels} labels, {self.predictions} predictions) in "
                f"{self.seconds:.1f} s: {counts}")


@dataclass(frozen=True)
class _Mask:
    """A label or a prediction reduced to what QA compares."""

    rle: dict
    area: int
    box: list[float]
    category: str | None
    score: float | None = None
    instance: Instance | None = None


def is_label(instance: Instance, image: ImageRecord | None = None, score_threshold: float = 0.5) -> bool:
    """A person's instance, or on a reviewed ``image`` any instance the reviewer kept (shown at its threshold)."""
    if image is not None and image.reviewed:
        return instance.shown_at(image.threshold(score_threshold))
    return instance.source != "model" or instance.user_edited


def not_rejected(predictions: list[_Mask], deleted: list[dict]) -> list[_Mask]:
    """The predictions that match no deleted instance (mask IoU < MATCH_IOU with each)."""
    if not predictions or not deleted:
        return predictions
    iou = np.asarray(mask_utils.iou([p.rle for p in predictions], deleted, [0] * len(deleted)))
    iou = iou.reshape(len(predictions), len(deleted))
    return [p for p, row in zip(predictions, iou) if row.max() < MATCH_IOU]


def compare(file_name: str, image_id: int, labels: list[_Mask], predictions: list[_Mask], crowd: list[dict],
            score_threshold: float) -> list[QAEntry]:
    """The disagreements of one image (see the module docstring)."""
    entries = []

    def add(kind, label, pred, iou, severity, reason):
        source = pred if pred is not None else label
        entries.append(QAEntry(kind, image_id, file_name, label.instance.id if label else None,
                               label.category if label else None, pred.category if pred else None,
                               None if pred is None else round(pred.score, 4), [round(v, 1) for v in source.box],
                               round(float(iou), 4), round(float(severity), 4), reason))

    n_p, n_l = len(predictions), len(labels)
    iou = np.zeros((n_p, n_l))
    inside = np.zeros((n_p, n_l))
    if n_p and n_l:
        p_rles, l_rles = [p.rle for p in predictions], [lab.rle for lab in labels]
        iou = np.asarray(mask_utils.iou(p_rles, l_rles, [0] * n_l)).reshape(n_p, n_l)
        inside = np.asarray(mask_utils.iou(p_rles, l_rles, [1] * n_l)).reshape(n_p, n_l)  # crowd rule: /area(p)
    for j, label in enumerate(labels):
        best = int(np.argmax(iou[:, j])) if n_p else None
        best_iou = float(iou[best, j]) if n_p else 0.0
        enclosed = [i for i in range(n_p) if inside[i, j] >= INSIDE and predictions[i].score >= score_threshold]
        if best_iou < MATCH_IOU and not enclosed:
            add("unmatched_label", label, None, best_iou, 0.8 * (1 - best_iou),
                f"no prediction finds this {label.category} label (best mask IoU {best_iou:.2f})")
            continue
        if enclosed:
            loose = max(enclosed, key=lambda i: iou[i, j])
            pred = predictions[loose]
            ratio = label.area / max(pred.area, 1)
            if ratio >= LOOSE_RATIO and iou[loose, j] < LOOSE_MAX_IOU:
                add("loose_label", label, pred, iou[loose, j], pred.score * (1 - iou[loose, j]),
                    f"label is {ratio:.1f}x the model's mask ({label.area} vs {pred.area} px, IoU {iou[loose, j]:.2f})")
                continue
        pred = predictions[best]
        same_class = any(predictions[i].category == label.category and iou[i, j] >= MATCH_IOU for i in range(n_p))
        if best_iou >= CLASS_IOU and pred.category != label.category and pred.score >= score_threshold \
                and not same_class:
            add("class_mismatch", label, pred, best_iou, pred.score * best_iou,
                f"labelled {label.category}, the model says {pred.category} (score {pred.score:.2f}, IoU {best_iou:.2f})")
    crowd_inside = (np.asarray(mask_utils.iou([p.rle for p in predictions], crowd, [1] * len(crowd))).reshape(n_p, -1)
                    if crowd and n_p else np.zeros((n_p, 0)))
    for i, pred in enumerate(predictions):
        if pred.score < score_threshold or (n_l and (iou[i].max() >= MATCH_IOU or inside[i].max() >= INSIDE)):
            continue
        if crowd_inside.shape[1] and crowd_inside[i].max() >= MATCH_IOU:
            continue
        best_iou = float(iou[i].max()) if n_l else 0.0
        add("missing_label", None, pred, best_iou, pred.score * (1 - best_iou),
            f"the model finds a {pred.category} (score {pred.score:.2f}) that no label covers (best IoU {best_iou:.2f})")
    return entries


def _label_masks(instances: list[Instance], names: dict[int, str], known: set[str], image: ImageRecord,
                 score_threshold: float) -> tuple[list, list, int]:
    labels, crowd, unknown = [], [], 0
    for inst in instances:
        if not is_label(inst, image, score_threshold):
            continue
        if (inst.meta or {}).get("iscrowd"):
            crowd.append(inst.rle)
        elif names.get(inst.category_id) in known:
            labels.append(_Mask(inst.rle, inst.area, list(inst.bbox), names[inst.category_id], instance=inst))
        else:
            unknown += 1
    return labels, crowd, unknown


def run_qa(workspace: Workspace, session, score_threshold: float = 0.5,
           progress: Callable[[int, int], None] | None = None) -> QAReport:
    """Compare the model with every labelled image of the workspace; entries worst first."""
    start = time.perf_counter()
    names = {c.id: c.name for c in workspace.categories()}
    model_names = {session.category_id(k): session.class_name(k) for k in range(session.num_classes)}
    known = set(model_names.values()) & set(names.values())
    if not known:
        raise QAError(f"The model's classes ({', '.join(sorted(set(model_names.values()))[:8])}) are none of the "
                      f"workspace's classes ({', '.join(sorted(names.values())[:8]) or 'none'}); QA cannot compare them")
    snapshot = workspace.snapshot()
    todo = [img for img in snapshot.images
            if img.reviewed or any(is_label(i) for i in snapshot.instances[img.id])]
    if not todo:
        raise QAError("No image has labels (instances a person made or imported, or a reviewed image) to check")
    report = QAReport(session.name, float(score_threshold))
    for k, image in enumerate(todo):
        if progress:
            progress(k, len(todo))
        labels, crowd, unknown = _label_masks(snapshot.instances[image.id], names, known, image, score_threshold)
        deleted = [i.rle for i in workspace.instances(image.id, include_deleted=True) if i.deleted]
        key = snapshot.image_paths[image.id].stem
        predictions = []
        for p in session.predictions(key, lambda: workspace.get_image(image.id)):
            name = model_names.get(p.category_id)
            if name in known:
                rle = {"size": list(p.mask.size), "counts": p.mask.counts}
                predictions.append(_Mask(rle, p.mask.area, list(p.mask.bbox), name, p.score))
        kept = not_rejected(predictions, deleted)
        report.rejected += len(predictions) - len(kept)
        predictions = kept
        report.images += 1
        report.labels += len(labels)
        report.unknown_class_labels += unknown
        report.predictions += len(predictions)
        report.entries += compare(image.original_name, image.id, labels, predictions, crowd, score_threshold)
    report.entries.sort(key=lambda e: -e.severity)
    report.seconds = time.perf_counter() - start
    return report
