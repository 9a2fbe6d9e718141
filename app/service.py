"""The app's composition root: one workspace, one model session and the parts that act on them.

    service = Service.create(workspace_dir, weights)
    service.images     adding images and running the model      (app.annotate.images.ImageLibrary)
    service.sequences  videos as sequences of tracked frames    (app.video.sequences.SequenceLibrary)
    service.tracks     track class, merge, split, assign        (app.video.tracks.TrackEditor)
    service.actions    annotation actions on a View              (app.annotate.actions.Annotator)
    service.screens    what the annotate view shows              (app.annotate.screen.Screens)
    service.explain    the Explain view                          (app.annotate.explain_page.ExplainPages)
    service.edits      canvas strokes, polygons, holes, specks   (app.annotate.mask_edits.MaskEditor)
    service.refiner    CondInst click-to-refine                  (app.annotate.refine.Refiner)
    service.propagation a video instance's mask to next frames (app.video.propagation.Propagator)
    service.jobs       background fine-tuning                    (app.retrain.jobs.RetrainJobs)
    service.reviews    annotated -> in review -> accepted/rejected (app.annotate.review.Reviews)
    service.presence   who views / edits which image             (app.team.presence.Presence)
    service.accounts   who may log in, with which role           (app.team.accounts.Accounts; None: no login)
    service.export_*   COCO datasets and results                 (app.interop.export)

Nothing here knows about Gradio; `app.web.ui` wires events to these parts. A damaged workspace is
reported (`workspace_error`) and can be recovered from the page, so the app always starts.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from pycocotools import mask as mask_utils

from app.annotate.actions import Annotator
from app.errors import AppError, ServiceError
from app.annotate.explain_page import ExplainPages
from app.interop.export import ExportError, build_coco, export_coco, export_coco_zip, remove_stale_staging
from app.annotate.images import ImageLibrary
from app.annotate.mask_edits import MaskEditor
from app.team.presence import Presence
from app.annotate.review import Reviews
from app.annotate.refine import Refiner
from app.store.ingest import sanitize_file_name
from app.annotate.screen import Screens
from app.video.sequences import DEFAULT_MAX_FRAMES, SequenceLibrary
from app.video.propagation import Propagator
from app.video.tracks import TrackEditor
from app.model.session import DEFAULT_WEIGHTS, REPO_ROOT, ModelSession
from app.view import DEFAULT_THRESHOLD, View
from app.store.workspace import Workspace, WorkspaceError, WorkspaceSnapshot, resolve_inside
from app.store.workspace_slot import WorkspaceSlot
from condinst.io import atomic_write_bytes

DEFAULT_SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
EXPORTS_DIR_NAME = "exports"

__all__ = ["Service", "ServiceError", "View", "DEFAULT_WEIGHTS", "DEFAULT_THRESHOLD"]


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


class ThresholdedWorkspace:
    """A read-only view of a workspace whose snapshot keeps what each image shows at a threshold.

    Reviewed images use their frozen threshold; the others `view_threshold`. `app.interop.export` only
    calls `snapshot()`, so exporting through this object writes what the annotators saw.
    """

    def __init__(self, workspace: Workspace, view_threshold: float):
        self.workspace = workspace
        self.view_threshold = float(view_threshold)

    def snapshot(self, reviewed_only: bool = False) -> WorkspaceSnapshot:
        snap = self.workspace.snapshot(reviewed_only=reviewed_only)
        kept = {img.id: [inst for inst in snap.instances[img.id] if inst.shown_at(img.threshold(self.view_threshold))]
                for img in snap.images}
        return replace(snap, instances=kept)


class Service:
    """The model session, the workspace and every part acting on them (see the module docstring)."""

    def __init__(self, workspace: Workspace | None, session: ModelSession, *, workspace_dir: Path | None = None,
                 workspace_error: str | None = None, samples_dir: Path | None = None,
                 max_video_frames: int = DEFAULT_MAX_FRAMES):
        self.slot = slot = WorkspaceSlot(workspace, workspace_dir, workspace_error)
        self.session = session
        self.notices: list[str] = []
        self.sequences = SequenceLibrary(slot, session, max_video_frames)
        self.images = ImageLibrary(slot, session, self.sequences, Path(samples_dir) if samples_dir else DEFAULT_SAMPLES_DIR)
        self.tracks = TrackEditor(slot)
        self.reviews = Reviews(slot, self.role)
        self.edits = MaskEditor(slot)
        self.actions = Annotator(slot, self.images, self.reviews, self.edits)
        self.screens = Screens(slot, self.sequences)
        self.explain = ExplainPages(slot, session, self.images)
        self.refiner = Refiner(slot, session, self.images)
        self.propagation = Propagator(slot, session, self.sequences)
        self.presence = Presence()
        self.accounts = None  # set by app.__main__.launch when logins are required
        self._jobs = None
        if workspace is not None:
            self._opened()

    @classmethod
    def create(cls, workspace_dir: str | os.PathLike, weights: str | os.PathLike | None, config: str | None = None,
               device: str = "cpu", recover: bool = False, samples_dir: str | os.PathLike | None = None,
               fast: bool = False, backend: str = "onnxruntime", max_video_frames: int = DEFAULT_MAX_FRAMES,
               snap_edges: bool = True) -> "Service":
        """Load the model and open the workspace; a damaged workspace is reported, not fatal. `snap_edges`:
        the model's masks get their boundaries snapped to the image's edges (`ModelSession`), as annotators
        want them; False keeps the model's own masks (`python -m app --raw-masks`).

        Model errors (missing or unloadable weights) propagate: without a model there is no app.
        """
        session = ModelSession.load(weights, config, device, fast=fast, backend=backend, snap_edges=snap_edges)
        workspace, error = None, None
        try:
            workspace = Workspace.open(workspace_dir, recover=recover)
        except WorkspaceError as exc:
            error = str(exc)
        return cls(workspace, session, workspace_dir=Path(workspace_dir).expanduser().resolve(),
                   workspace_error=error, samples_dir=Path(samples_dir) if samples_dir else None,
                   max_video_frames=max_video_frames)

    def _opened(self) -> None:
        """After the workspace opened: classes, recovery notice, stale export files."""
        self.notices.extend(self.session.sync_categories(self.workspace))
        if self.workspace.recovery is not None:
            self.notices.append(self.workspace.recovery.message)
        removed = remove_stale_staging(self.workspace.root / EXPORTS_DIR_NAME)
        if removed:
            self.notices.append(f"Removed {removed} unfinished export file(s) left by an interrupted export.")
        swept = self.workspace.sweep()
        if swept:
            self.notices.append(f"Removed {swept} image file(s) left by an interrupted upload, import or video "
                                "(no database referred to them).")

    def close(self) -> None:
        """Stop a running retrain job and close the workspace."""
        if self._jobs is not None:
            self._jobs.shutdown()
        if self.workspace is not None:
            self.workspace.close()

    def recover_workspace(self) -> str:
        """Move a damaged database aside (kept, renamed), salvage its rows into a new one."""
        if self.workspace is not None:
            return "The workspace is fine; nothing to recover."
        try:
            self.slot.workspace = Workspace.open(self.workspace_dir, recover=True)
        except WorkspaceError as exc:
            raise ServiceError(f"Recovery failed: {exc}") from None
        self.slot.error = None
        self._opened()
        recovery = self.workspace.recovery
        return recovery.message if recovery else "The workspace opened normally."

    @property
    def workspace(self) -> Workspace | None:
        return self.slot.workspace

    @property
    def workspace_dir(self) -> Path:
        return self.slot.root

    @property
    def workspace_error(self) -> str | None:
        return self.slot.error

    @property
    def ws(self) -> Workspace:
        """The open workspace, or ServiceError explaining why there is none."""
        return self.slot.ws

    # ---- views ------------------------------------------------------------------------------------
    def initial_view(self, image_id: int | None = None, threshold: float = DEFAULT_THRESHOLD) -> View:
        """A view of `image_id` if it exists, else of the first image (None if there is none)."""
        if self.workspace is None:
            return View(threshold=threshold)
        ids = [img.id for img in self.ws.list_images()]
        wanted = int(image_id) if image_id is not None and str(image_id).isdigit() else None
        chosen = wanted if wanted in ids else (ids[0] if ids else None)
        if chosen is not None:
            try:
                self.images.ensure_segmented(chosen)
            except AppError as exc:
                self.notices.append(str(exc))
        return View(image_id=chosen, threshold=threshold)

    def role(self, user: str | None) -> str:
        """The person's role; without accounts (or without a login) everyone is an admin."""
        if self.accounts is None or user is None:
            return "admin"
        return self.accounts.role(user) or "annotator"

    def categories(self) -> list[tuple[str, int]]:
        """(label, id) of every workspace category, for dropdowns."""
        return [(f"{c.name} ({c.id})", c.id) for c in self.ws.categories()]

    def model_info(self) -> str:
        return self.session.info()

    def summary(self) -> str:
        if self.workspace is None:
            return f"**Workspace unavailable**: {self.workspace_error}"
        images = self.ws.list_images()
        return f"Workspace `{self.ws.root}`: {len(images)} image(s), {sum(i.reviewed for i in images)} reviewed."

    # ---- export -----------------------------------------------------------------------------------
    @property
    def exports_dir(self) -> Path:
        path = self.ws.root / EXPORTS_DIR_NAME
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceError(f"Cannot create the exports folder {path}: {exc.strerror}.") from None
        return path

    def thresholded(self, view_threshold: float) -> ThresholdedWorkspace:
        return ThresholdedWorkspace(self.ws, view_threshold)

    def export_zip(self, reviewed_only: bool = False, mask_format: str = "rle",
                   min_score: float = DEFAULT_THRESHOLD) -> Path:
        """The workspace as a COCO dataset zip under <workspace>/exports/."""
        target = self.exports_dir / f"coco-{utc_stamp()}.zip"
        return export_coco_zip(self.thresholded(min_score), target, reviewed_only, mask_format)

    def export_folder(self, name: str, reviewed_only: bool = False, mask_format: str = "rle",
                      min_score: float = DEFAULT_THRESHOLD) -> Path:
        """The workspace as a COCO dataset folder <workspace>/exports/<name>/ (replaced if present)."""
        clean = sanitize_file_name(name or "", default="")
        if not clean:
            raise ServiceError("Give the export folder a name (letters, digits, '-', '_').")
        folder = resolve_inside(self.exports_dir, clean)
        export_coco(self.thresholded(min_score), folder, reviewed_only, mask_format, overwrite=True)
        return folder

    def export_ytvis_zip(self, reviewed_only: bool = False, min_score: float = DEFAULT_THRESHOLD) -> Path:
        """The video sequences as a YouTube-VIS dataset zip under <workspace>/exports/ (app.interop.ytvis_export)."""
        from app.interop.ytvis_export import export_ytvis_zip

        return export_ytvis_zip(self.thresholded(min_score), self.exports_dir / f"ytvis-{utc_stamp()}.zip",
                                reviewed_only)

    def export_dataset_dict(self, reviewed_only: bool = False, min_score: float = DEFAULT_THRESHOLD) -> dict:
        return build_coco(self.thresholded(min_score), reviewed_only).dataset

    def results_json(self, threshold: float = DEFAULT_THRESHOLD) -> Path:
        """COCO *results* (detections) of every image at its threshold, as a JSON file."""
        snapshot = self.thresholded(threshold).snapshot()
        if not snapshot.images:
            raise ServiceError("Nothing to download: the workspace has no images.")
        names = {c.id: c.name for c in snapshot.categories}
        entries = []
        for image in snapshot.images:
            for inst in snapshot.instances[image.id]:
                if inst.area == 0:
                    continue
                entries.append({"image_id": image.id, "file_name": image.original_name,
                                "category_id": inst.category_id, "category_name": names.get(inst.category_id),
                                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(inst.rle)],
                                "score": round(float(inst.score if inst.score is not None else 1.0), 6),
                                "segmentation": {"size": [inst.height, inst.width],
                                                 "counts": inst.rle_counts.decode("ascii")},
                                "instance_id": inst.id, "source": inst.source})
        target = self.exports_dir / f"results-{utc_stamp()}.json"
        try:
            atomic_write_bytes(target, json.dumps(entries).encode("utf-8"))
        except OSError as exc:
            raise ServiceError(f"Cannot write into {target.parent}: {exc.strerror}.") from None
        return target

    # ---- retraining --------------------------------------------------------------------------------
    @property
    def jobs(self):
        """The workspace's retrain jobs (found again after a restart)."""
        from app.retrain.jobs import RetrainJobs

        if self._jobs is None:
            self._jobs = RetrainJobs(self.ws.root / "retrain")
        return self._jobs

    @staticmethod
    def retrain_available() -> bool:
        from app.retrain.jobs import RetrainJobs

        return RetrainJobs.available()

    def retrain_defaults(self) -> tuple[str, int, int]:
        from app.retrain.jobs import RetrainJobs

        return RetrainJobs.defaults(self.session.device)

    def start_retrain(self, iterations: int, batch_size: int, reviewed_only: bool = False,
                      min_score: float = DEFAULT_THRESHOLD) -> str:
        """Export the workspace and fine-tune the current model on it in the background."""
        if self.session.weights is None:
            raise ServiceError("The app runs without a weights file; there is no checkpoint to fine-tune.")
        view = self.thresholded(min_score)

        def export(dataset_dir: Path) -> Path:
            return export_coco(view, dataset_dir, reviewed_only, "rle")

        device, _, _ = self.retrain_defaults()
        return self.jobs.start(export, self.session.weights, self.session.predictor.cfg.to_dict(), int(iterations),
                               int(batch_size), device)

    def retrain_status(self):
        """The current or last job's status ('idle' while there is no workspace)."""
        if self.workspace is None:
            from app.retrain.jobs import JobStatus

            return JobStatus()
        return self.jobs.status()

    def finished_jobs(self) -> list:
        return [] if self.workspace is None else self.jobs.finished()

    def cancel_retrain(self) -> str:
        return self.jobs.cancel()

    def use_retrained(self, checkpoint: str | Path | None = None) -> str:
        """Switch the app to a finished job's checkpoint (the newest one by default)."""
        finished = self.jobs.finished()
        if not finished:
            raise ServiceError("No finished retraining job to switch to.")
        chosen = Path(checkpoint) if checkpoint else Path(finished[0].checkpoint)
        if chosen not in {Path(job.checkpoint) for job in finished}:
            raise ServiceError(f"{chosen.name} is not the checkpoint of a finished job.")
        return self.use_checkpoint(chosen)

    def use_checkpoint(self, weights: str | Path, config: str | None = None) -> str:
        self.session.switch(weights, config)
        if self.workspace is not None:
            self.notices.extend(self.session.sync_categories(self.workspace))
        return f"Now using {Path(weights).name}."


__all__ += ["ExportError", "ThresholdedWorkspace"]
