"""Everything the app does, as plain Python (no Gradio): the UI only wires events to this.

A `Service` holds the model (`condinst.predictor.Predictor`) and the persistent `Workspace`.
Each browser session keeps a small `View` (current image, selected instance, score threshold,
class filter, solo instance, last brush point, probe point); actions take a `View` and return
the new one, and `screen(view)` / `explain_*` turn a view into pictures and table rows.

Conventions:
  * Every edit is written to the workspace at once (one SQLite transaction), so closing the
    tab, a crash or a restart loses nothing.
  * Coordinates passed to actions are pixels of the *original* image; pictures may be shown
    scaled down (`display_scale`), and `to_image_coords` converts a click on them.
  * Mistakes and bad input raise `ServiceError` with a message meant for the user.
  * The score threshold hides model instances (never edited by the user) scoring below it, in
    the view, the COCO results and the dataset export alike; the class filter only affects the
    view. Hidden instances are a view flag too and are still exported.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from app import render
from app.export import ExportError, build_coco, export_coco, export_coco_zip
from app.workspace import (Instance, Prediction, Workspace, WorkspaceError, WorkspaceSnapshot, resolve_inside,
                           sanitize_file_name)
from condinst.io import atomic_write_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO_ROOT / "assets" / "default_model" / "model.pth"
DEFAULT_SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_THRESHOLD = 0.3
EXPORTS_DIR_NAME = "exports"
TOOLS = ("select", "brush", "erase", "point", "paint")
TABLE_HEADERS = ["id", "class", "score", "area", "FPN level", "source", "state"]


class ServiceError(Exception):
    """An action could not be done; the message is meant for the user."""


# Exceptions whose message is meant for the user (the UI shows them instead of a traceback).
USER_ERRORS = (ServiceError, WorkspaceError, ExportError)


@dataclass
class View:
    """What one browser session looks at (kept in a gr.State, so small and copyable)."""

    image_id: int | None = None
    selected: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    categories: tuple[int, ...] | None = None  # class filter; None shows every class
    solo: int | None = None
    last_point: tuple[int, int, int] | None = None  # (instance id, x, y) of the last brush click
    probe: tuple[int, int] | None = None  # last point explained with "what would segment here"


@dataclass
class Screen:
    """Everything the annotate view shows for one `View`."""

    image: np.ndarray | None
    rows: list[list]
    image_choices: list[tuple[str, int]]
    image_id: int | None
    reviewed: bool
    selected: int | None
    selected_category: int | None
    info: str
    can_undo: bool
    can_redo: bool


@dataclass
class ExplainView:
    """The pictures of one explanation (RGB arrays) and a Markdown summary."""

    location: np.ndarray
    coord_x: np.ndarray
    coord_y: np.ndarray
    features: np.ndarray
    filters: np.ndarray
    probability: np.ndarray
    text: str


@dataclass
class ClickResult:
    """Outcome of a click on the image: the new view, a message and the tool to keep active."""

    view: View
    message: str
    tool: str


@dataclass
class SegmentReport:
    """What a segmentation run did."""

    image_ids: list[int]
    instances: int
    seconds: float

    @property
    def message(self) -> str:
        return (f"Segmented {len(self.image_ids)} image(s): {self.instances} instance(s) in "
                f"{self.seconds:.1f} s")


@dataclass
class AddReport:
    """Result of adding uploads: ids of the usable images, which were new, per-file errors."""

    image_ids: list[int] = field(default_factory=list)
    new_ids: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def level_name(level: int) -> str:
    """FPN level index (0 = stride 8) -> its usual name P3..P7."""
    return f"P{int(level) + 3}"


def utc_stamp() -> str:
    """A compact UTC timestamp for file names."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


def model_key(weights: Path | None) -> str:
    """A short id of a weights file (path, size, mtime) to tag what a model produced."""
    if weights is None:
        return "random"
    stat = Path(weights).stat()
    text = f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def shown_by_score(instance: Instance, threshold: float) -> bool:
    """Whether the score threshold keeps an instance: user work is always kept."""
    if instance.source != "model" or instance.user_edited or instance.score is None:
        return True
    return instance.score >= threshold


class ScoreFilteredWorkspace:
    """A read-only stand-in for a Workspace whose snapshot drops instances under a score.

    `app.export` only calls `snapshot()`, so exporting through this object writes exactly the
    instances the annotators see at that threshold.
    """

    def __init__(self, workspace: Workspace, min_score: float):
        self.workspace = workspace
        self.min_score = float(min_score)

    def snapshot(self, reviewed_only: bool = False) -> WorkspaceSnapshot:
        snap = self.workspace.snapshot(reviewed_only=reviewed_only)
        kept = {image_id: [inst for inst in instances if shown_by_score(inst, self.min_score)]
                for image_id, instances in snap.instances.items()}
        return replace(snap, instances=kept)


class ExplainerCache:
    """LRU cache of `Explainer`s keyed by (image id, model key), safe across threads."""

    def __init__(self, capacity: int = 3):
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, explainer) -> None:
        with self._lock:
            self._items[key] = explainer
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class Service:
    """The app's model + workspace and every action on them (see the module docstring)."""

    def __init__(self, workspace: Workspace | None, predictor, weights: Path | None = None, *,
                 workspace_dir: Path | None = None, workspace_error: str | None = None,
                 samples_dir: Path | None = None, explainer_cache: int = 3,
                 max_side: int = render.DEFAULT_MAX_SIDE, device: str = "cpu",
                 config: str | None = None):
        self.workspace = workspace
        self.workspace_dir = Path(workspace.root if workspace else workspace_dir)
        self.workspace_error = workspace_error
        self.predictor = predictor
        self.weights = Path(weights) if weights else None
        self.config = config
        self.device = device
        self.model_key = model_key(self.weights)
        self.samples_dir = Path(samples_dir) if samples_dir else DEFAULT_SAMPLES_DIR
        self.max_side = max_side
        self.explainers = ExplainerCache(explainer_cache)
        self.notices: list[str] = []
        self._model_lock = threading.RLock()
        self.retrain = None  # set by attach_retrain (app.retrain.RetrainManager)
        if self.workspace is not None:
            self._sync_categories()

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, workspace_dir: str | os.PathLike, weights: str | os.PathLike | None,
               config: str | None = None, device: str = "cpu", recover: bool = False,
               samples_dir: str | os.PathLike | None = None, **kwargs) -> "Service":
        """Load the model and open the workspace; a damaged workspace is reported, not fatal.

        Model errors (missing or unloadable weights) propagate: without a model there is no app.
        """
        from condinst.predictor import Predictor

        predictor = Predictor.from_weights(weights, config, device=device)
        workspace, error = None, None
        try:
            workspace = Workspace.open(workspace_dir, recover=recover)
        except WorkspaceError as exc:
            error = str(exc)
        service = cls(workspace, predictor, Path(weights) if weights else None,
                      workspace_dir=Path(workspace_dir).expanduser().resolve(),
                      workspace_error=error, samples_dir=Path(samples_dir) if samples_dir else None,
                      device=device, config=config, **kwargs)
        if workspace is not None and workspace.recovered_from is not None:
            service.notices.append(f"The damaged database was moved aside to {workspace.recovered_from}; "
                                   "a new, empty workspace was started.")
        return service

    def close(self) -> None:
        """Stop a running retrain job and close the workspace."""
        if self.retrain is not None:
            self.retrain.shutdown()
        if self.workspace is not None:
            self.workspace.close()

    def recover_workspace(self) -> str:
        """Move a damaged database aside (kept, renamed) and start an empty workspace."""
        if self.workspace is not None:
            return "The workspace is fine; nothing to recover."
        try:
            self.workspace = Workspace.open(self.workspace_dir, recover=True)
        except WorkspaceError as exc:
            raise ServiceError(f"Recovery failed: {exc}") from exc
        self.workspace_error = None
        self._sync_categories()
        moved = self.workspace.recovered_from
        return (f"Started a new workspace; the damaged database was kept as {moved}." if moved
                else "The workspace opened normally.")

    @property
    def ws(self) -> Workspace:
        """The open workspace, or ServiceError explaining why there is none."""
        if self.workspace is None:
            raise ServiceError(f"The workspace cannot be used: {self.workspace_error} "
                               "Use 'Recover workspace' to move the damaged database aside.")
        return self.workspace

    # ------------------------------------------------------------------ model and classes

    def _sync_categories(self) -> None:
        """Make sure every model class exists as a workspace category (ids from the model)."""
        wanted = {self.category_id(k): self.class_name(k) for k in range(self.num_classes)}
        existing = {c.id: c.name for c in self.workspace.categories()}
        for cid, name in wanted.items():
            if cid in existing and existing[cid] != name:
                self.notices.append(f"Model class {name!r} has category id {cid}, which this workspace "
                                    f"already calls {existing[cid]!r}; the workspace name is kept.")
        self.workspace.ensure_categories(wanted)

    @property
    def num_classes(self) -> int:
        return int(self.predictor.cfg.fcos.num_classes)

    def class_name(self, index: int) -> str:
        return self.predictor.class_name(index)

    def category_id(self, index: int) -> int:
        return self.predictor.category_id(index)

    def class_index(self, category_id: int) -> int | None:
        """Model class index of a category id, None if the model does not know it."""
        for k in range(self.num_classes):
            if self.category_id(k) == int(category_id):
                return k
        return None

    def categories(self) -> list[tuple[str, int]]:
        """(name, id) of every workspace category, for dropdowns."""
        return [(f"{c.name} ({c.id})", c.id) for c in self.ws.categories()]

    def category_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.ws.categories()}

    def model_info(self) -> str:
        """One Markdown line about the loaded model."""
        name = self.weights.name if self.weights else "random weights"
        classes = ", ".join(self.class_name(k) for k in range(min(self.num_classes, 6)))
        more = f", ... ({self.num_classes} classes)" if self.num_classes > 6 else ""
        return f"Model: `{name}` on {self.device} - classes: {classes}{more}"

    def use_checkpoint(self, weights: str | os.PathLike, config: str | None = None) -> str:
        """Switch the app to another checkpoint (e.g. a retrained one)."""
        from condinst.predictor import Predictor

        weights = Path(weights)
        try:
            predictor = Predictor.from_weights(weights, config, device=self.device)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported to the user
            raise ServiceError(f"Cannot load {weights.name}: {exc}") from exc
        with self._model_lock:
            self.predictor = predictor
            self.weights = weights
            self.config = config
            self.model_key = model_key(weights)
            self.explainers.clear()
        if self.workspace is not None:
            self._sync_categories()
        return f"Now using {weights.name}."

    def _explainer(self, image_id: int):
        """The (cached) Explainer of an image for the current model."""
        from condinst.explain import Explainer

        key = (int(image_id), self.model_key)
        explainer = self.explainers.get(key)
        if explainer is None:
            image = self.ws.get_image(image_id)
            with self._model_lock:
                explainer = Explainer(self.predictor, image)
            self.explainers.put(key, explainer)
        return explainer

    # ------------------------------------------------------------------ images

    def add_files(self, paths: Sequence[str | os.PathLike]) -> AddReport:
        """Copy uploaded files into the workspace; bad files are reported, the rest added."""
        paths = [p for p in (paths or []) if p]
        if not paths:
            raise ServiceError("No images given: upload one or more image files first.")
        known = {img.id for img in self.ws.list_images()}
        report = AddReport()
        for path in paths:
            name = Path(path).name
            try:
                image_id = self.ws.add_image(path, file_name=name)
            except WorkspaceError as exc:
                report.errors.append(f"{name}: {exc}")
                continue
            if image_id not in report.image_ids:
                report.image_ids.append(image_id)
            if image_id not in known and image_id not in report.new_ids:
                report.new_ids.append(image_id)
        return report

    def sample_names(self) -> list[str]:
        """File names of the bundled sample images."""
        if not self.samples_dir.is_dir():
            return []
        return sorted(p.name for p in self.samples_dir.iterdir()
                      if p.suffix.lower() in SAMPLE_SUFFIXES and p.is_file())

    def add_samples(self, names: Sequence[str]) -> AddReport:
        """Add bundled samples by name (only names from `sample_names()` are accepted)."""
        available = set(self.sample_names())
        chosen = [n for n in (names or []) if n in available]
        if not chosen:
            raise ServiceError("Pick one or more sample images first.")
        return self.add_files([self.samples_dir / name for name in chosen])

    def image_records(self):
        return self.ws.list_images()

    def image_choices(self) -> list[tuple[str, int]]:
        """Dropdown entries: '3: name.jpg (reviewed)'."""
        return [(f"{img.id}: {img.original_name}" + (" (reviewed)" if img.reviewed else ""), img.id)
                for img in self.ws.list_images()]

    def unsegmented(self, image_ids: Sequence[int]) -> list[int]:
        """The images among `image_ids` that never had an instance."""
        return [i for i in image_ids if not self.ws.instances(i, include_deleted=True)]

    def segment(self, image_ids: Sequence[int],
                progress: Callable[[int, int], None] | None = None) -> SegmentReport:
        """Run the model on images and store its predictions (user edits are kept)."""
        image_ids = [int(i) for i in image_ids or []]
        if not image_ids:
            raise ServiceError("No images to segment: upload images or pick samples first.")
        start, total = time.perf_counter(), 0
        for n, image_id in enumerate(image_ids):
            if progress is not None:
                progress(n, len(image_ids))
            total += len(self._segment_one(image_id))
        return SegmentReport(image_ids, total, time.perf_counter() - start)

    def _segment_one(self, image_id: int) -> list[int]:
        """Predictions of one image -> workspace (replacing unedited model instances)."""
        explainer = self._explainer(image_id)
        with self._model_lock:
            result = explainer.result()
        det = result.detections
        (h, w), (ih, iw) = result.image_size, result.input_size
        predictions = []
        for k in range(len(result)):
            cls = int(result.classes[k])
            lx, ly = det.locations[k].tolist()
            meta = {"det_index": k, "model": self.model_key, "fpn_level": int(det.fpn_levels[k]),
                    "location": [round(lx * w / iw, 2), round(ly * h / ih, 2)]}
            predictions.append(Prediction(self.category_id(cls), float(result.scores[k]),
                                          result.masks[k].cpu().numpy(), meta))
        return self.ws.set_predictions(image_id, predictions)

    # ------------------------------------------------------------------ views and navigation

    def initial_view(self, image_id: int | None = None, threshold: float = DEFAULT_THRESHOLD) -> View:
        """A view of `image_id` if it exists, else of the first image (None if there is none)."""
        if self.workspace is None:
            return View(threshold=threshold)
        ids = [img.id for img in self.ws.list_images()]
        chosen = int(image_id) if image_id is not None and int(image_id) in ids else (ids[0] if ids else None)
        return View(image_id=chosen, threshold=threshold)

    def go_to(self, view: View, image_id: int | None) -> View:
        """Show another image (selection, solo and probe are reset)."""
        if image_id is None:
            return replace(view, image_id=None, selected=None, solo=None, last_point=None, probe=None)
        try:
            self.ws.get_image_record(int(image_id))
        except WorkspaceError as exc:
            raise ServiceError(str(exc)) from exc
        return replace(view, image_id=int(image_id), selected=None, solo=None, last_point=None, probe=None)

    def step(self, view: View, delta: int) -> View:
        """Previous (-1) / next (+1) image, wrapping around."""
        ids = [img.id for img in self.ws.list_images()]
        if not ids:
            raise ServiceError("The workspace has no images yet.")
        if view.image_id not in ids:
            return self.go_to(view, ids[0])
        position = (ids.index(view.image_id) + delta) % len(ids)
        return self.go_to(view, ids[position])

    def set_threshold(self, view: View, threshold: float) -> View:
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ServiceError(f"The score threshold must be between 0 and 1, got {threshold}.")
        return replace(view, threshold=threshold)

    def set_class_filter(self, view: View, category_ids: Sequence[int] | None) -> View:
        """Show only these categories (None or every category = no filter)."""
        if category_ids is None:
            return replace(view, categories=None)
        return replace(view, categories=tuple(int(c) for c in category_ids))

    def _require_image(self, view: View) -> int:
        if view.image_id is None:
            raise ServiceError("No image selected: upload images or pick samples first.")
        return int(view.image_id)

    def _visible(self, view: View, include_hidden: bool = True) -> list[Instance]:
        """Instances of the view's image passing threshold, class filter and solo."""
        if view.image_id is None:
            return []
        shown = []
        for inst in self.ws.instances(view.image_id):
            if not shown_by_score(inst, view.threshold):
                continue
            if view.categories is not None and inst.category_id not in view.categories:
                continue
            if view.solo is not None and inst.id != view.solo:
                continue
            if inst.hidden and not include_hidden:
                continue
            shown.append(inst)
        return shown

    def table_rows(self, view: View) -> list[list]:
        """Rows of the instance table (see TABLE_HEADERS)."""
        names = self.category_names()
        rows = []
        for inst in self._visible(view):
            meta = inst.meta or {}
            level = level_name(meta["fpn_level"]) if "fpn_level" in meta else ""
            state = ", ".join(flag for flag, on in (("hidden", inst.hidden), ("edited", inst.user_edited))
                              if on)
            score = "" if inst.score is None else round(float(inst.score), 3)
            rows.append([inst.id, names.get(inst.category_id, str(inst.category_id)), score,
                         int(inst.mask.sum()), level, inst.source, state])
        return rows

    def overlay(self, view: View) -> np.ndarray | None:
        """The current image with its shown, non-hidden instances drawn (display size)."""
        if view.image_id is None:
            return None
        names = self.category_names()
        items = []
        for inst in self._visible(view, include_hidden=False):
            label = f"#{inst.id} {names.get(inst.category_id, inst.category_id)}"
            if inst.score is not None:
                label += f" {inst.score:.2f}"
            if inst.user_edited or inst.source != "model":
                label += " *"
            items.append(render.DrawItem(inst.id, inst.mask, label))
        image = self.ws.get_image(view.image_id)
        return render.draw_instances(image, items, view.selected, self.max_side)

    def screen(self, view: View) -> Screen:
        """Everything the annotate view shows."""
        if self.workspace is None or view.image_id is None:
            choices = self.image_choices() if self.workspace is not None else []
            return Screen(None, [], choices, None, False, None, None,
                          "No image yet: upload images or pick samples, then they are segmented.",
                          False, False)
        record = self.ws.get_image_record(view.image_id)
        ids = [img.id for img in self.ws.list_images()]
        rows = self.table_rows(view)
        stored = len(self.ws.instances(view.image_id))
        selected = self.selected_instance(view)
        info = (f"**{record.original_name}** - image {ids.index(record.id) + 1} of {len(ids)} - "
                f"{record.width}x{record.height} - {len(rows)} shown of {stored} instances"
                f" (score >= {view.threshold:.2f})" + (" - **reviewed**" if record.reviewed else ""))
        if view.solo is not None:
            info += f" - solo #{view.solo}"
        if selected is not None:
            info += f" - selected #{selected.id}"
        return Screen(self.overlay(view), rows, self.image_choices(), record.id, record.reviewed,
                      selected.id if selected else None, selected.category_id if selected else None,
                      info, self.ws.can_undo(record.id), self.ws.can_redo(record.id))

    # ------------------------------------------------------------------ selection

    def display_scale(self, view: View) -> float:
        """Factor from original pixels to the pictures shown for the view's image."""
        record = self.ws.get_image_record(self._require_image(view))
        return render.display_scale(record.height, record.width, self.max_side)

    def to_image_coords(self, view: View, x: float, y: float) -> tuple[int, int]:
        """A click on a displayed picture -> original image pixel (x, y)."""
        scale = self.display_scale(view)
        return int(x / scale), int(y / scale)

    def _check_point(self, view: View, x: float, y: float) -> tuple[int, int]:
        record = self.ws.get_image_record(self._require_image(view))
        x, y = int(round(float(x))), int(round(float(y)))
        if not (0 <= x < record.width and 0 <= y < record.height):
            raise ServiceError(f"Point ({x}, {y}) is outside the {record.width}x{record.height} image.")
        return x, y

    def selected_instance(self, view: View) -> Instance | None:
        """The selected instance if it still exists, is live and belongs to the image."""
        if view.selected is None or view.image_id is None:
            return None
        try:
            inst = self.ws.get_instance(view.selected)
        except WorkspaceError:
            return None
        if inst.deleted or inst.image_id != view.image_id:
            return None
        return inst

    def _require_selected(self, view: View) -> Instance:
        self._require_image(view)
        inst = self.selected_instance(view)
        if inst is None:
            raise ServiceError("Select an instance first (click it on the image or in the table).")
        return inst

    def select(self, view: View, instance_id: int | None) -> View:
        """Select an instance of the current image by id (None clears the selection)."""
        if instance_id is None:
            return replace(view, selected=None, last_point=None)
        image_id = self._require_image(view)
        try:
            inst = self.ws.get_instance(int(instance_id))
        except WorkspaceError as exc:
            raise ServiceError(str(exc)) from exc
        if inst.image_id != image_id or inst.deleted:
            raise ServiceError(f"Instance {instance_id} is not an instance of this image.")
        return replace(view, selected=inst.id, last_point=None)

    def instance_at(self, view: View, x: int, y: int) -> Instance | None:
        """The smallest shown, non-hidden instance whose mask covers (x, y)."""
        hits = [inst for inst in self._visible(view, include_hidden=False) if inst.mask[y, x]]
        return min(hits, key=lambda inst: int(inst.mask.sum())) if hits else None

    def select_at(self, view: View, x: float, y: float) -> tuple[View, str]:
        """Select what is under a click; clicking empty space clears the selection."""
        x, y = self._check_point(view, x, y)
        inst = self.instance_at(view, x, y)
        if inst is None:
            return replace(view, selected=None, last_point=None), f"No instance at ({x}, {y})."
        return replace(view, selected=inst.id, last_point=None), f"Selected instance #{inst.id}."

    # ------------------------------------------------------------------ edits

    def click(self, view: View, x: float, y: float, tool: str, size: int = 15,
              category_id: int | None = None, join: bool = False) -> ClickResult:
        """A click on the image with one of TOOLS; returns the new view and a message."""
        if tool not in TOOLS:
            raise ServiceError(f"Unknown tool {tool!r}; use one of {', '.join(TOOLS)}.")
        if tool == "select":
            new_view, message = self.select_at(view, x, y)
            return ClickResult(new_view, message, tool)
        if tool in ("brush", "erase"):
            new_view, message = self.brush(view, x, y, size, erase=tool == "erase", join=join)
            return ClickResult(new_view, message, tool)
        if tool == "paint":
            new_view, message = self.paint_new(view, x, y, size, category_id)
            return ClickResult(new_view, message, "brush")
        new_view, message = self.add_at_point(view, x, y, category_id)
        return ClickResult(new_view, message, tool)

    def delete_selected(self, view: View) -> tuple[View, str]:
        inst = self._require_selected(view)
        self.ws.delete_instance(inst.id)
        return replace(view, selected=None, last_point=None,
                       solo=None if view.solo == inst.id else view.solo), f"Deleted instance #{inst.id}."

    def set_category(self, view: View, category_id: int) -> tuple[View, str]:
        inst = self._require_selected(view)
        if category_id is None:
            raise ServiceError("Choose a class.")
        try:
            self.ws.set_category(inst.id, int(category_id))
        except WorkspaceError as exc:
            raise ServiceError(str(exc)) from exc
        name = self.category_names().get(int(category_id), category_id)
        return view, f"Instance #{inst.id} is now {name!r}."

    def toggle_hidden(self, view: View) -> tuple[View, str]:
        inst = self._require_selected(view)
        self.ws.set_hidden(inst.id, not inst.hidden)
        return view, f"Instance #{inst.id} {'shown' if inst.hidden else 'hidden'}."

    def toggle_solo(self, view: View) -> tuple[View, str]:
        """Show only the selected instance (again: show all)."""
        if view.solo is not None:
            return replace(view, solo=None), "Showing all instances."
        inst = self._require_selected(view)
        return replace(view, solo=inst.id), f"Showing only instance #{inst.id}."

    def _disc(self, shape: tuple[int, int], x: int, y: int, size: int,
              previous: tuple[int, int] | None = None) -> np.ndarray:
        """A filled disc of diameter `size` at (x, y), joined to `previous` by a thick line."""
        canvas = np.zeros(shape, np.uint8)
        size = max(1, int(size))
        cv2.circle(canvas, (x, y), max(size // 2, 0), 1, -1)
        if previous is not None:
            cv2.line(canvas, previous, (x, y), 1, size)
        return canvas.astype(bool)

    def brush(self, view: View, x: float, y: float, size: int, erase: bool = False,
              join: bool = False) -> tuple[View, str]:
        """Paint (or erase) a disc of the selected instance's mask; `join` draws a stroke
        from the previous click on the same instance."""
        inst = self._require_selected(view)
        x, y = self._check_point(view, x, y)
        previous = None
        if join and view.last_point is not None and view.last_point[0] == inst.id:
            previous = view.last_point[1:]
        disc = self._disc(inst.mask.shape, x, y, size, previous)
        mask = inst.mask & ~disc if erase else inst.mask | disc
        new_view = replace(view, last_point=(inst.id, x, y))
        if erase and not mask.any():
            self.ws.delete_instance(inst.id)
            return (replace(new_view, selected=None, last_point=None),
                    f"Erased all of instance #{inst.id}; it was deleted (Undo brings it back).")
        self.ws.set_mask(inst.id, mask)
        return new_view, f"{'Erased from' if erase else 'Painted'} instance #{inst.id}."

    def _default_category(self, category_id: int | None) -> int:
        if category_id is not None:
            return int(category_id)
        categories = self.ws.categories()
        if not categories:
            raise ServiceError("The workspace has no classes.")
        return categories[0].id

    def paint_new(self, view: View, x: float, y: float, size: int,
                  category_id: int | None = None) -> tuple[View, str]:
        """Start a new hand-painted instance with one disc; it becomes the selection."""
        image_id = self._require_image(view)
        x, y = self._check_point(view, x, y)
        record = self.ws.get_image_record(image_id)
        mask = self._disc((record.height, record.width), x, y, size)
        try:
            new_id = self.ws.add_instance(image_id, self._default_category(category_id), mask, source="user")
        except WorkspaceError as exc:
            raise ServiceError(str(exc)) from exc
        return (replace(view, selected=new_id, last_point=(new_id, x, y)),
                f"Added instance #{new_id}; keep clicking with the brush to paint it.")

    def add_at_point(self, view: View, x: float, y: float,
                     category_id: int | None = None) -> tuple[View, str]:
        """Add the mask that the filters generated at (x, y) produce (segment-at-point)."""
        image_id = self._require_image(view)
        x, y = self._check_point(view, x, y)
        class_index = self.class_index(category_id) if category_id is not None else None
        point = self._segment_point(image_id, x, y, class_index)
        if not point.mask.any():
            raise ServiceError(f"The filters generated at ({x}, {y}) segment nothing here; "
                               "try another point or paint the instance.")
        exp = point.explanation
        category = int(category_id) if category_id is not None else self.category_id(exp.class_index)
        meta = {"point": [x, y], "model": self.model_key, "fpn_level": exp.fpn_level,
                "location": [round(v, 2) for v in exp.location], "class_index": exp.class_index}
        try:
            new_id = self.ws.add_instance(image_id, category, point.mask, source="point",
                                          score=exp.score, meta=meta)
        except WorkspaceError as exc:
            raise ServiceError(str(exc)) from exc
        return replace(view, selected=new_id, last_point=None), f"Added instance #{new_id} at ({x}, {y})."

    def _segment_point(self, image_id: int, x: int, y: int, class_index: int | None = None):
        explainer = self._explainer(image_id)
        with self._model_lock:
            return explainer.at_point(x, y, class_index)

    def undo(self, view: View) -> tuple[View, str]:
        entry = self.ws.undo(self._require_image(view))
        if entry is None:
            return view, "Nothing to undo."
        return self.refresh(view), f"Undid: {entry.label}."

    def redo(self, view: View) -> tuple[View, str]:
        entry = self.ws.redo(self._require_image(view))
        if entry is None:
            return view, "Nothing to redo."
        return self.refresh(view), f"Redid: {entry.label}."

    def refresh(self, view: View) -> View:
        """Drop a selection/solo that undo or redo removed."""
        view = replace(view, last_point=None)
        if view.selected is not None and self.selected_instance(view) is None:
            view = replace(view, selected=None)
        if view.solo is not None:
            try:
                if self.ws.get_instance(view.solo).deleted:
                    view = replace(view, solo=None)
            except WorkspaceError:
                view = replace(view, solo=None)
        return view

    def set_reviewed(self, view: View, reviewed: bool) -> tuple[View, str]:
        image_id = self._require_image(view)
        self.ws.set_reviewed(image_id, bool(reviewed))
        return view, f"Image {image_id} marked {'reviewed' if reviewed else 'not reviewed'}."

    def rerun(self, view: View) -> tuple[View, str]:
        """Run the model on the current image again (edited instances are kept)."""
        report = self.segment([self._require_image(view)])
        return self.refresh(view), report.message

    # ------------------------------------------------------------------ explanations

    def explain_selected(self, view: View) -> ExplainView:
        """CondInst's view of the selected instance: where its filters came from, what they read."""
        inst = self._require_selected(view)
        explainer = self._explainer(inst.image_id)
        meta = inst.meta or {}
        note = ""
        with self._model_lock:
            if self._same_detection(explainer, inst):
                exp = explainer.instance(int(meta["det_index"]))
            else:
                if meta.get("model") == self.model_key and "point" in meta:
                    x, y = meta["point"]
                    class_index = meta.get("class_index")
                    note = f"Added by a click at ({x}, {y}): the filters generated there."
                else:
                    x, y = render.inside_point(inst.mask) or (0, 0)
                    class_index = None
                    note = (f"This instance has no generating location in the current model "
                            f"(hand-drawn or from another model): showing the filters generated at "
                            f"its inner point ({x}, {y}).")
                exp = explainer.at_point(x, y, class_index).explanation
        if inst.user_edited:
            note += " The mask was edited by hand; the pictures show what the model produced."
        title = f"Instance #{inst.id} ({self.category_names().get(inst.category_id)})"
        return self._explain_view(inst.image_id, exp, inst.mask, title, note.strip(), explainer)

    def _same_detection(self, explainer, inst: Instance) -> bool:
        """Whether detection meta["det_index"] of the current model is the one stored for `inst`."""
        meta = inst.meta or {}
        if meta.get("model") != self.model_key or "det_index" not in meta or inst.score is None:
            return False
        result = explainer.result()
        k = int(meta["det_index"])
        return 0 <= k < len(result) and abs(float(result.scores[k]) - float(inst.score)) < 1e-4

    def explain_point(self, view: View, x: float, y: float) -> tuple[View, ExplainView]:
        """What would the filters generated at (x, y) segment? (Explainer.at_point)"""
        image_id = self._require_image(view)
        x, y = self._check_point(view, x, y)
        point = self._segment_point(image_id, x, y)
        title = f"Point ({x}, {y})"
        note = (f"The best-scoring level at this point generated these filters; the mask has "
                f"{int(point.mask.sum())} pixels. 'Add as instance' keeps it.")
        view = replace(view, probe=(x, y))
        return view, self._explain_view(image_id, point.explanation, point.mask, title, note,
                                        self._explainer(image_id), probe=(x, y))

    def add_probe(self, view: View, category_id: int | None = None) -> tuple[View, str]:
        """Add the mask of the last explained point as a new instance."""
        if view.probe is None:
            raise ServiceError("Click a point in Explain first.")
        return self.add_at_point(view, view.probe[0], view.probe[1], category_id)

    def _explain_view(self, image_id: int, exp, mask: np.ndarray, title: str, note: str, explainer,
                      probe: tuple[int, int] | None = None) -> ExplainView:
        """Render one InstanceExplanation into pictures."""
        image = self.ws.get_image(image_id)
        panel = render.scaled_size(*image.shape[:2], min(1.0, 480 / max(image.shape[:2])))
        height, width = image.shape[:2]
        cell = exp.stride * width / explainer.input_size[1]
        location = render.location_view(image, exp.location, exp.stride, level_name(exp.fpn_level),
                                        mask, self.max_side, point=probe, cell_size=cell)
        at = (exp.location[0] / width, exp.location[1] / height)
        coord_x = render.signed_heatmap(exp.coord_maps[0], panel, "relative x", marker=at)
        coord_y = render.signed_heatmap(exp.coord_maps[1], panel, "relative y", marker=at)
        with self._model_lock:
            features = explainer.mask_features()
        n_coords = exp.weights[0].shape[1] - features.shape[0]
        reads = np.abs(exp.weights[0][:, n_coords:]).mean(axis=0)
        grid = render.feature_grid(features, channel_weights=reads)
        filters = render.filters_image(exp.weights, exp.biases, num_coord_channels=n_coords)
        threshold = float(self.predictor.cfg.mask_head.mask_threshold)
        probability = render.probability_map(exp.mask_probs, panel, threshold)
        n_params = sum(w.size for w in exp.weights) + sum(b.size for b in exp.biases)
        x, y = exp.location
        lines = [f"### {title}",
                 f"- class **{self.class_name(exp.class_index)}**, score {exp.score:.3f} "
                 f"(class prob {exp.class_prob:.3f}, centerness {exp.ctrness:.3f})",
                 f"- generated at location ({x:.0f}, {y:.0f}) px on FPN level "
                 f"**{level_name(exp.fpn_level)}** (stride {exp.stride}), grid cell "
                 f"(row {exp.grid_cell[0]}, col {exp.grid_cell[1]})",
                 f"- dynamic filters: {n_params} numbers in {len(exp.weights)} layers "
                 f"({', '.join(f'{w.shape[0]}x{w.shape[1]}' for w in exp.weights)}); the first layer "
                 f"reads {n_coords} coordinate maps + {features.shape[0]} mask-branch channels"]
        if note:
            lines.append(f"- {note}")
        return ExplainView(location, coord_x, coord_y, grid, filters, probability, "\n".join(lines))

    # ------------------------------------------------------------------ export

    @property
    def exports_dir(self) -> Path:
        path = self.ws.root / EXPORTS_DIR_NAME
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _filtered(self, min_score: float) -> ScoreFilteredWorkspace:
        return ScoreFilteredWorkspace(self.ws, min_score)

    def export_zip(self, reviewed_only: bool = False, mask_format: str = "rle",
                   min_score: float = DEFAULT_THRESHOLD) -> Path:
        """The workspace as a COCO dataset zip under <workspace>/exports/."""
        target = self.exports_dir / f"coco-{utc_stamp()}.zip"
        try:
            return export_coco_zip(self._filtered(min_score), target, reviewed_only, mask_format)
        except ExportError as exc:
            raise ServiceError(str(exc)) from exc

    def export_folder(self, name: str, reviewed_only: bool = False, mask_format: str = "rle",
                      min_score: float = DEFAULT_THRESHOLD) -> Path:
        """The workspace as a COCO dataset folder <workspace>/exports/<name>/ (replaced if present)."""
        clean = sanitize_file_name(name or "", default="")
        if not clean:
            raise ServiceError("Give the export folder a name (letters, digits, '-', '_').")
        try:
            folder = resolve_inside(self.exports_dir, clean)
            export_coco(self._filtered(min_score), folder, reviewed_only, mask_format, overwrite=True)
        except (ExportError, WorkspaceError) as exc:
            raise ServiceError(str(exc)) from exc
        return folder

    def export_dataset_dict(self, reviewed_only: bool = False, min_score: float = DEFAULT_THRESHOLD) -> dict:
        """The COCO dataset dict (no files written), e.g. for a summary."""
        try:
            return build_coco(self._filtered(min_score), reviewed_only).dataset
        except ExportError as exc:
            raise ServiceError(str(exc)) from exc

    def results_json(self, threshold: float = DEFAULT_THRESHOLD) -> Path:
        """COCO *results* (detections) of every image at `threshold`, as a JSON file."""
        snapshot = self._filtered(threshold).snapshot()
        if not snapshot.images:
            raise ServiceError("Nothing to download: the workspace has no images.")
        names = {c.id: c.name for c in snapshot.categories}
        entries = []
        for image in snapshot.images:
            for inst in snapshot.instances[image.id]:
                rle = inst.rle
                if mask_utils.area(rle) == 0:
                    continue
                entries.append({"image_id": image.id, "file_name": image.original_name,
                                "category_id": inst.category_id, "category_name": names.get(inst.category_id),
                                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                                "score": round(float(inst.score if inst.score is not None else 1.0), 6),
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                                "instance_id": inst.id, "source": inst.source})
        target = self.exports_dir / f"results-{utc_stamp()}.json"
        atomic_write_bytes(target, json.dumps(entries).encode("utf-8"))
        return target

    # ------------------------------------------------------------------ retraining

    @staticmethod
    def retrain_available() -> bool:
        """Whether the training library (training.engine + training.cli) is installed."""
        import importlib.util

        return all(importlib.util.find_spec(name) is not None for name in ("training.engine", "training.cli"))

    def retrain_defaults(self) -> tuple[str, int, int]:
        """(device, iterations, batch size): a real budget on a GPU, a small one on a CPU."""
        import torch

        if torch.cuda.is_available():
            return ("cuda" if not self.device.startswith("cuda") else self.device), 300, 8
        return "cpu", 20, 2

    def _retrain_manager(self):
        from app.retrain import RetrainManager

        if self.retrain is None:
            self.retrain = RetrainManager()
        return self.retrain

    def start_retrain(self, iterations: int, batch_size: int, reviewed_only: bool = False,
                      min_score: float = DEFAULT_THRESHOLD) -> str:
        """Export the workspace, split it and start fine-tuning the current model (background)."""
        from app.retrain import JobSpec, RetrainError, fine_tune_config, split_dataset

        if not self.retrain_available():
            raise ServiceError("Retraining needs the training library (training/), which is not installed.")
        if self.weights is None:
            raise ServiceError("The app runs without a weights file; there is no checkpoint to fine-tune.")
        iterations, batch_size = int(iterations), int(batch_size)
        if iterations < 1 or batch_size < 1:
            raise ServiceError("Iterations and batch size must be at least 1.")
        manager = self._retrain_manager()
        if manager.status().active:
            raise ServiceError("A retraining job is already running; wait for it or cancel it.")
        job_dir = self.ws.root / "retrain" / f"job-{utc_stamp()}"
        try:
            export_coco(self._filtered(min_score), job_dir / "dataset", reviewed_only, "rle")
        except ExportError as exc:
            raise ServiceError(str(exc)) from exc
        dataset = json.loads((job_dir / "dataset" / "annotations" / "instances.json").read_text())
        try:
            train, val, note = split_dataset(dataset)
        except RetrainError as exc:
            raise ServiceError(str(exc)) from exc
        if not train["annotations"]:
            raise ServiceError("Nothing to train on: the training images have no instances.")
        for name, data in (("train.json", train), ("val.json", val)):
            atomic_write_bytes(job_dir / name, json.dumps(data).encode("utf-8"))
        config = fine_tune_config(self.predictor.cfg.to_dict(), iterations, batch_size)
        atomic_write_bytes(job_dir / "config.json", json.dumps(config, indent=2).encode("utf-8"))
        device, _, _ = self.retrain_defaults()
        spec = JobSpec(job_dir=job_dir, images_dir=job_dir / "dataset" / "images", train_ann=job_dir / "train.json",
                       val_ann=job_dir / "val.json", config=job_dir / "config.json", init_weights=self.weights,
                       max_iter=iterations, batch_size=batch_size, device=device, held_out_note=note)
        try:
            manager.start(spec)
        except RetrainError as exc:
            raise ServiceError(str(exc)) from exc
        return (f"Started fine-tuning {self.weights.name} for {iterations} iterations on {device} "
                f"({len(train['images'])} training images). {note}")

    def retrain_status(self):
        """The current or last job's JobStatus (state 'idle' if none ran)."""
        from app.retrain import JobStatus

        return self.retrain.status() if self.retrain is not None else JobStatus()

    def cancel_retrain(self) -> str:
        return self.retrain.cancel() if self.retrain is not None else "No job is running."

    def use_retrained(self) -> str:
        """Switch the app to the checkpoint of the finished job."""
        status = self.retrain_status()
        if status.state != "done" or status.checkpoint is None:
            raise ServiceError("No finished retraining job to switch to.")
        return self.use_checkpoint(status.checkpoint)

    def summary(self) -> str:
        """Markdown summary of the workspace (images, reviewed, instances)."""
        if self.workspace is None:
            return f"**Workspace unavailable**: {self.workspace_error}"
        images = self.ws.list_images()
        reviewed = sum(img.reviewed for img in images)
        return (f"Workspace `{self.ws.root}`: {len(images)} image(s), {reviewed} reviewed.")

