"""Adding images and running the model on them, without ever losing or replacing a person's work.

* An upload is decoded and segmented first, then stored with its predictions in one transaction:
  a file that fails (empty, not an image, too large, the model failed) leaves nothing behind and
  the others of the batch are stored whole. Uploading a file again that is already stored but was
  never segmented (an older workspace, an interrupted run) segments it.
* "Segment all" segments the images that have no predictions and re-runs the model on the others
  under the workspace's keep rules (`Workspace.set_predictions`): reviewed images are skipped,
  instances a person touched stay, and predictions on top of them are not added.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from app.annotate.overlaps import OverlapItem, resolve_overlaps
from app.errors import AppError, ServiceError
from app.video.sequences import SequenceLibrary
from app.model.session import ModelSession
from app.view import View, check_point, refresh, require_image
from app.store.workspace_slot import WorkspaceSlot
from condinst.video.reader import is_video_file

logger = logging.getLogger(__name__)
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")
Progress = Callable[[int, int], None]


@dataclass
class AddReport:
    """Result of adding files: ids of the usable images, which were new, per-file errors."""

    image_ids: list[int] = field(default_factory=list)
    new_ids: list[int] = field(default_factory=list)
    instances: int = 0
    errors: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)  # one line per video stored as a sequence

    @property
    def message(self) -> str:
        text = f"Added {len(self.new_ids)} new image(s) with {self.instances} instance(s)"
        if len(self.image_ids) - len(self.videos) > len(self.new_ids):
            text += f", {len(self.image_ids) - len(self.videos) - len(self.new_ids)} already in the workspace"
        if self.videos and not self.new_ids:
            text = ""
        text = " ".join(self.videos + ([text + "."] if text else []))
        return text + (" Not added: " + "; ".join(self.errors) if self.errors else "")


@dataclass
class SegmentReport:
    """What a segmentation run did."""

    image_ids: list[int] = field(default_factory=list)
    instances: int = 0
    seconds: float = 0.0
    skipped_reviewed: list[int] = field(default_factory=list)
    skipped_frames: int = 0  # video frames: re-run with the tracker only (app.video.sequences), never one by one
    kept_overlap: int = 0
    replaced: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = (f"Segmented {len(self.image_ids)} image(s): {self.instances} new instance(s), {self.replaced} "
                f"replaced, in {self.seconds:.1f} s")
        if self.skipped_reviewed:
            text += f"; skipped {len(self.skipped_reviewed)} reviewed image(s)"
        if self.kept_overlap:
            text += f"; {self.kept_overlap} prediction(s) not added because they overlap instances you kept"
        if self.skipped_frames:
            text += f"; skipped {self.skipped_frames} video frame(s) (re-running one frame would break its tracks)"
        return text + ("; failed: " + "; ".join(self.errors) if self.errors else "") + "."


class ImageLibrary:
    """Uploads, samples and segmentation runs of a service's workspace."""

    def __init__(self, workspace: WorkspaceSlot, session: ModelSession, sequences: SequenceLibrary, samples_dir: Path):
        self.slot, self.session, self.sequences = workspace, session, sequences
        self.samples_dir = Path(samples_dir)
        # "Resolve overlaps" applied to what the model segments (`app serve --resolve-overlaps IOU`): of the model's
        # predictions overlapping by >= this mask IoU only the best score is stored; None: all are stored.
        self.overlap_iou: float | None = None

    @property
    def ws(self):
        return self.slot.ws

    def image_key(self, image_id: int) -> str:
        """The content hash of a stored image (its file name), the model's cache key."""
        return Path(self.ws.get_image_record(image_id).file_path).stem

    # ---- adding ---------------------------------------------------------------------------------------
    def add_files(self, paths: Sequence[str | Path], progress: Progress | None = None) -> AddReport:
        """Decode, segment and store each file; bad files are reported, never half-stored."""
        paths = [p for p in (paths or []) if p]
        if not paths:
            raise ServiceError("No images given: upload one or more image files first.")
        report = AddReport()
        for n, path in enumerate(paths):
            if progress is not None:
                progress(n, len(paths))
            try:
                if is_video_file(path):  # a video becomes a sequence of frames (app.video.sequences)
                    video = self.sequences.add_video(path, progress)
                    report.image_ids.append(video.first_image)
                    report.videos.append(video.message)
                    continue
                prepared = self.ws.prepare(path)
                existing = self.ws.find_image(prepared)
                if existing is not None:
                    report.instances += self.ensure_segmented(existing)
                    report.image_ids.append(existing)
                    continue
                predictions = self._predict(prepared.sha256, prepared.pixels, prepared.name)
                image_id = self.ws.add_image(prepared, predictions=predictions, segmented_by=self.session.key)
            except AppError as exc:
                report.errors.append(str(exc))
                continue
            report.image_ids.append(image_id)
            report.new_ids.append(image_id)
            report.instances += len(predictions)
        if not report.image_ids and report.errors:
            raise ServiceError("No image was added: " + "; ".join(report.errors))
        return report

    def _predict(self, key: str, load, name: str):
        try:
            predictions = self.session.predictions(key, load)
        except AppError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model failing on one image must not stop the batch
            logger.exception("segmentation of %s failed", name)
            raise ServiceError(f"{name}: the model failed on this image ({type(exc).__name__}: {exc})") from None
        if self.overlap_iou is not None:  # our own rule, not the model: outside the model's failure report
            predictions = without_duplicates(predictions, self.overlap_iou)
        return predictions

    def sample_names(self) -> list[str]:
        if not self.samples_dir.is_dir():
            return []
        return sorted(p.name for p in self.samples_dir.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES and p.is_file())

    def add_samples(self, names: Sequence[str], progress: Progress | None = None) -> AddReport:
        """Add bundled samples by name (only names from `sample_names()` are accepted)."""
        available = set(self.sample_names())
        chosen = [n for n in (names or []) if n in available]
        if not chosen:
            raise ServiceError("Pick one or more sample images first.")
        return self.add_files([self.samples_dir / name for name in chosen], progress)

    # ---- segmenting -----------------------------------------------------------------------------------
    def ensure_segmented(self, image_id: int) -> int:
        """Segment an image that never had predictions; returns the number of instances added."""
        if self.ws.get_image_record(image_id).segmented_by is not None:
            return 0
        key = self.image_key(image_id)
        predictions = self._predict(key, lambda: self.ws.get_image(image_id), f"image {image_id}")
        return len(self.ws.set_predictions(image_id, predictions, model=self.session.key).added)

    def segment(self, image_ids: Sequence[int], progress: Progress | None = None) -> SegmentReport:
        """Run the model on images under the keep rules (reviewed ones are skipped)."""
        image_ids = [int(i) for i in image_ids or []]
        if not image_ids:
            raise ServiceError("No images to segment: upload images or pick samples first.")
        report, start = SegmentReport(), time.perf_counter()
        for n, image_id in enumerate(image_ids):
            if progress is not None:
                progress(n, len(image_ids))
            record = self.ws.get_image_record(image_id)
            if record.sequence_id is not None:
                report.skipped_frames += 1
                continue
            if record.reviewed:
                report.skipped_reviewed.append(image_id)
                continue
            try:
                predictions = self._predict(self.image_key(image_id), lambda: self.ws.get_image(image_id),
                                            f"image {image_id}")
            except AppError as exc:
                report.errors.append(str(exc))
                continue
            done = self.ws.set_predictions(image_id, predictions, model=self.session.key)
            report.image_ids.append(image_id)
            report.instances += len(done.added)
            report.kept_overlap += done.kept_overlap
            report.replaced += done.replaced
            if done.skipped_reviewed:
                report.skipped_reviewed.append(image_id)
        report.seconds = time.perf_counter() - start
        return report

    def rerun(self, view: View) -> tuple[View, str]:
        """Run the model on the current image again (it says what it kept)."""
        image_id = require_image(view)
        if self.ws.get_image_record(image_id).reviewed:
            return view, "This image is reviewed: the model is not run on it again (un-review it first)."
        if self.ws.get_image_record(image_id).sequence_id is not None:
            return view, ("This is a video frame: the model is not run on one frame again (its instances' tracks "
                          "would break); fix the masks and tracks by hand.")
        report = self.segment([image_id])
        return refresh(self.ws, view), report.message

    def add_at_point(self, view: View, x: float, y: float, category_id: int | None = None) -> tuple[View, str]:
        """Add the mask that the filters generated at (x, y) produce (segment-at-point)."""
        from dataclasses import replace

        image_id = require_image(view)
        x, y = check_point(self.ws, view, x, y)
        class_index = self.session.class_index(category_id) if category_id is not None else None
        point = self.session.segment_point(self.image_key(image_id), lambda: self.ws.get_image(image_id), x, y,
                                           class_index)
        if not point.mask.any():
            raise ServiceError(f"The filters generated at ({x}, {y}) segment nothing here; try another point or "
                               "paint the instance.")
        exp = point.explanation
        category = int(category_id) if category_id is not None else self.session.category_id(exp.class_index)
        meta = {"point": [x, y], "model": self.session.key, "fpn_level": exp.fpn_level,
                "location": [round(v, 2) for v in exp.location], "class_index": exp.class_index}
        new_id = self.ws.add_instance(image_id, category, point.mask, source="point", score=exp.score, meta=meta)
        return replace(view, selected=new_id, last_point=None), f"Added instance #{new_id} at ({x}, {y})."


def without_duplicates(predictions: list, min_iou: float) -> list:
    """The model's predictions (`app.store.records.Prediction`, masks as `EncodedMask`) less those that overlap a
    better-scored one by >= `min_iou` (`app.annotate.overlaps`: the editor's "resolve overlaps" rule)."""
    items = [OverlapItem(id=k, rle={"size": list(p.mask.size), "counts": p.mask.counts}, score=p.score, edited=False)
             for k, p in enumerate(predictions)]
    gone = {r.remove for r in resolve_overlaps(items, min_iou)}
    return [p for k, p in enumerate(predictions) if k not in gone]
