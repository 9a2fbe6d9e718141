"""The one predict / fit adapter between Label Studio's requests and CondInst (nothing else runs the model).

    backend = CondInstBackend(session, studio, trainer, score_threshold=0.5)
    backend.setup(label_config)                       # {"model_version": ...}; LabelConfigError if unusable
    backend.predict(tasks, label_config, context)     # one prediction per task, or the click-to-refine mask
    backend.fit(event, payload)                       # START_TRAINING etc. -> the training hook

Pre-annotations are the model's detections (`app.model.session.ModelSession.predictions`, the same
`Predictor` as ``condinst predict``) scoring at least ``score_threshold``, one region per instance
in the project's kind (brush RLE or polygons), labelled by `match_labels`. With a ``context`` of
keypoints (``is_positive`` true / false) and / or a rectangle, the answer is one mask from CondInst's
click-to-refine (`ModelSession.refine` -> `condinst.refine.refine_mask`): a rectangle alone acts as a positive
click at its centre, and the mask is kept inside the rectangle.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from app.errors import AppError
from app.store.masks import decode_mask
from app.interop.ml_backend.client import LabelStudio
from app.interop.ml_backend.interop import task_image_url
from app.interop.ml_backend.label_config import (LabelConfig, LabelConfigError, LabelMatch, find_label, match_labels,
                                         parse_label_config)
from app.interop.ml_backend.results import ResultError, mask_regions, percent_box, percent_point
from app.interop.ml_backend.trainer import Trainer, model_version
from condinst.errors import UserError
from condinst.preprocess import read_image
from training.entry_checks import describe, is_id

log = logging.getLogger("condinst.ml_backend")
MAX_BATCH = 4  # default: more tasks in one /predict and the first is answered; Label Studio asks for the rest one by one
MAX_CLICKS = 64
TRAIN_EVENTS = ("START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


class RequestError(AppError):
    """A request this backend cannot serve as sent (bad task, context or label config)."""


class CondInstBackend:
    """See the module docstring."""

    def __init__(self, session, studio: LabelStudio, trainer: Trainer | None, score_threshold: float = 0.5,
                 train_after: int = 0, max_batch: int = MAX_BATCH):
        self.session, self.studio, self.trainer = session, studio, trainer
        self.score_threshold = float(score_threshold)
        self.train_after = int(train_after)
        self.max_batch = int(max_batch)
        self._new_annotations: dict[int, int] = {}

    @property
    def model_version(self) -> str:
        return model_version(self.session)

    def health(self) -> dict:
        """The /health answer: up, the model_version, and the training job's state."""
        answer = {"status": "UP", "model_class": "CondInst", "model_version": self.model_version}
        if self.trainer is not None:
            status = self.trainer.status()
            if status.state != "idle":
                answer["training"] = {"state": status.state, "iteration": status.iteration,
                                      "max_iter": status.max_iter, "message": status.message}
        return answer

    def class_names(self) -> list[str]:
        return [self.session.class_name(k) for k in range(self.session.num_classes)]

    def project(self, label_config) -> tuple[LabelConfig, LabelMatch]:
        """The project's config and label mapping; LabelConfigError if no label is a model class."""
        config = parse_label_config(label_config)
        match = match_labels(config.labels, self.class_names())
        if not match.to_class:
            raise LabelConfigError(f"None of the project's labels ({', '.join(config.labels)}) is a class of the "
                                   f"model ({', '.join(self.class_names())}); name the labels after the classes.")
        return config, match

    # ---- /setup ---------------------------------------------------------------------------------
    def setup(self, label_config) -> dict:
        config, match = self.project(label_config)
        answer = {"model_version": self.model_version}
        if match.note():
            answer["warning"] = match.note()
            log.warning("setup: %s", match.note())
        return answer

    # ---- /predict -------------------------------------------------------------------------------
    def predict(self, tasks, label_config, context=None) -> list[dict]:
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise RequestError("'tasks' must be a non-empty list of task objects.")
        config, match = self.project(label_config)
        if len(tasks) > self.max_batch:  # Label Studio's fallback for a single answer: one request per task, each
            log.info("predict: %d tasks in one request; answering the first, Label Studio asks for the others one "
                     "by one", len(tasks))  # within its own timeout (a CPU model needs seconds per image)
            tasks = tasks[:1]
        clicks = (context or {}).get("result") if isinstance(context, dict) else None
        if clicks:
            return [self.refine(tasks[0], config, match, clicks)]
        return [self.pre_annotate(task, config, match) for task in tasks]

    def _image(self, task: dict, config: LabelConfig) -> tuple[str, np.ndarray]:
        """(content key, RGB pixels) of a task's image, fetched from Label Studio."""
        url = task_image_url(task, config.value)
        if url is None:
            raise RequestError(f"task {describe(task.get('id'))}: no {config.value!r} field with the image URL in "
                               "its data")
        with tempfile.TemporaryDirectory(prefix="condinst-ls-") as folder:
            path = self.studio.download(url, task.get("id"), Path(folder), "image")
            key = hashlib.sha1(path.read_bytes()).hexdigest()
            try:
                rgb = read_image(path)
            except UserError as exc:
                message = str(exc).replace(str(path), url[:200])
                raise RequestError(f"task {describe(task.get('id'))}: {message}") from None
        return key, rgb

    def pre_annotate(self, task: dict, config: LabelConfig, match: LabelMatch) -> dict:
        start = time.perf_counter()
        key, rgb = self._image(task, config)
        height, width = rgb.shape[:2]
        regions, scores = [], []
        for prediction in self.session.predictions(key, lambda: rgb):
            k = self.session.class_index(prediction.category_id)
            if prediction.score < self.score_threshold or k not in match.to_label:
                continue
            mask = decode_mask(prediction.mask.counts, height, width)
            regions += mask_regions(mask, match.to_label[k], config, prediction.score)
            scores.append(prediction.score)
        log.info("predict task %s: %d instances in %.2f s", task.get("id"), len(scores), time.perf_counter() - start)
        return {"result": regions, "score": round(float(np.mean(scores)), 4) if scores else 0.0,
                "model_version": self.model_version}

    def refine(self, task: dict, config: LabelConfig, match: LabelMatch, clicks) -> dict:
        """CondInst's click-to-refine mask for a context of keypoints and / or a rectangle."""
        if not isinstance(clicks, list) or len(clicks) > MAX_CLICKS:
            raise RequestError(f"context.result must be a list of at most {MAX_CLICKS} keypoints / rectangles.")
        key, rgb = self._image(task, config)
        height, width = rgb.shape[:2]
        positive, negative, box, wanted = [], [], None, None
        try:
            for region in clicks:
                kind = region.get("type") if isinstance(region, dict) else None
                if kind == "keypointlabels":
                    point = percent_point(region, height, width)
                    (negative if region.get("is_positive") is False else positive).append(point)
                elif kind == "rectanglelabels":
                    box = percent_box(region, height, width)
                else:
                    continue
                value = region.get("value")
                labels = value.get(kind) if isinstance(value, dict) else None
                wanted = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else wanted
        except ResultError as exc:
            raise RequestError(f"task {describe(task.get('id'))}: {exc}") from None
        if box is not None and not positive:
            positive.append(((box[0] + box[2] - 1) // 2, (box[1] + box[3] - 1) // 2))
        if not positive:
            raise RequestError("Click inside the object first (a positive keypoint), or draw a rectangle around it.")
        start = time.perf_counter()
        mask, class_index = self.session.refine(key, lambda: rgb, positive, negative)
        if box is not None:
            inside = np.zeros_like(mask)
            inside[box[1]:box[3], box[0]:box[2]] = True
            mask &= inside
        label = find_label(wanted, config.labels) or match.to_label.get(class_index, config.labels[0])
        regions = mask_regions(mask, label, config, None) if mask.any() else []
        log.info("refine task %s: %d positive / %d negative click(s)%s -> %d px in %.2f s", task.get("id"),
                 len(positive), len(negative), " + box" if box else "", int(mask.sum()), time.perf_counter() - start)
        return {"result": regions, "score": 1.0, "model_version": self.model_version}

    # ---- /webhook and /train ----------------------------------------------------------------------
    def fit(self, event: str, payload: dict) -> dict:
        """Start training on START_TRAINING (or after `train_after` new annotations); other events are noted."""
        if event not in TRAIN_EVENTS:
            return {"status": "ignored", "event": event}
        project = payload.get("project") if isinstance(payload, dict) else None
        if not isinstance(project, dict) or not is_id(project.get("id")):
            raise RequestError(f"{event}: the payload has no project id")
        project_id = project["id"]
        if event != "START_TRAINING":
            count = self._new_annotations.get(project_id, 0) + 1
            self._new_annotations[project_id] = count
            if not self.train_after or count < self.train_after:
                return {"status": "noted", "new_annotations": count}
        return self.train(project_id, project.get("label_config"))

    def train(self, project_id: int, label_config) -> dict:
        if self.trainer is None:
            raise RequestError("Training is off in this backend (started without a workdir).")
        config, match = self.project(label_config)
        message = self.trainer.start(int(project_id), config, match)
        self._new_annotations[int(project_id)] = 0
        return {"status": "ok", "job": self.trainer.status().job_id, "message": message}
