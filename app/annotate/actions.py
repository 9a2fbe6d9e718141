"""Annotation actions: a browser session's `View` in, the new `View` and a message out.

Coordinates are pixels of the *original* image. Every edit is written to the workspace at once
(one SQLite transaction, one undo step). Mistakes raise `ServiceError` with a message for the user.
Hit-testing reads display-size previews (`Instance.preview`), so it costs the same on a 50 MP photo
as on a small one; a repeated click on the same spot cycles through the instances stacked there.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from app import view as view_lookups
from app.store.history import StaleEdit
from app.errors import ServiceError
from app.annotate.images import ImageLibrary
from app.annotate.mask_edits import MaskEditor
from app.annotate.overlaps import DEFAULT_MIN_IOU, overlap_items, resolve_overlaps
from app.store.masks import disc, preview_scale
from app.store.records import is_crowd
from app.annotate.review import Reviews
from app.video.sequences import representatives
from app.view import View
from app.store.workspace import Instance, WorkspaceError
from app.store.workspace_slot import WorkspaceSlot

TOOLS = ("select", "brush", "erase", "point", "paint")


@dataclass
class ClickResult:
    view: View
    message: str
    tool: str


class Annotator:
    """The actions of the annotate view, on the workspace (segmenting new images and reviewing through the
    image library and the review rules)."""

    def __init__(self, workspace: WorkspaceSlot, images: ImageLibrary, reviews: Reviews, edits: MaskEditor):
        self.slot, self.images, self.reviews, self.edits = workspace, images, reviews, edits

    @property
    def ws(self):
        return self.slot.ws

    # ---- images and navigation --------------------------------------------------------------------
    def require_image(self, view: View) -> int:
        return view_lookups.require_image(view)

    def go_to(self, view: View, image_id: int | None) -> View:
        """Show another image (selection, solo and probe are reset); unsegmented images are segmented."""
        if image_id is None:
            return replace(view, image_id=None, selected=None, solo=None, last_point=None, probe=None, last_pick=None,
                           refine=None)
        try:
            self.ws.get_image_record(image_id)
        except WorkspaceError as exc:
            raise ServiceError(str(exc)) from None
        self.images.ensure_segmented(int(image_id))
        return replace(view, image_id=int(image_id), selected=None, solo=None, last_point=None, probe=None,
                       last_pick=None, refine=None)

    def step(self, view: View, delta: int, unreviewed: bool = False) -> tuple[View, str]:
        """Previous (-1) / next (+1) image, wrapping around; `unreviewed` skips reviewed images."""
        image_id = self.neighbour(view, delta, unreviewed)
        if image_id is None:
            return view, "Every image is reviewed."
        return self.go_to(view, image_id), ""

    def neighbour(self, view: View, delta: int, unreviewed: bool = False) -> int | None:
        """The image previous (-1) / next (+1) would show, wrapping around (None: every image is reviewed)."""
        images = representatives([img for img in self.ws.list_images()  # a video sequence is one item
                                  if view.state_filter is None or img.review_state == view.state_filter], view.image_id)
        if not images:
            raise ServiceError("The workspace has no images yet." if view.state_filter is None else
                               f"No image is {view.state_filter.replace('_', ' ')}.")
        ids = [img.id for img in images]
        start = ids.index(view.image_id) if view.image_id in ids else -1 if delta > 0 else 0
        for offset in range(1, len(ids) + 1):
            candidate = images[(start + delta * offset) % len(ids)]
            if not unreviewed or not candidate.reviewed:
                return candidate.id
        return None

    def set_reviewed(self, view: View, reviewed: bool) -> tuple[View, str]:
        """"Reviewed" on = accepted (a reviewer's transition, freezing the threshold); off = annotated again."""
        image_id = self.require_image(view)
        self.reviews.transition(image_id, "accepted" if reviewed else "annotated",
                                        threshold=view.threshold if reviewed else None)
        if reviewed:
            record = self.ws.get_image_record(image_id)
            return view, f"Image {image_id} reviewed; its score threshold is frozen at {record.review_threshold:.2f}."
        return view, f"Image {image_id} is no longer reviewed."

    def set_threshold(self, view: View, threshold: float) -> View:
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ServiceError(f"The score threshold must be between 0 and 1, got {threshold}.")
        return replace(view, threshold=threshold)

    def set_class_filter(self, view: View, category_ids: Sequence[int] | None) -> View:
        return replace(view, categories=None if category_ids is None else tuple(int(c) for c in category_ids))

    def set_display(self, view: View, opacity: float | None = None, labels: bool | None = None) -> View:
        if opacity is not None and not 0.0 <= float(opacity) <= 1.0:
            raise ServiceError("The mask opacity must be between 0 and 1.")
        return replace(view, opacity=view.opacity if opacity is None else float(opacity),
                       labels=view.labels if labels is None else bool(labels))

    # ---- what is shown ---------------------------------------------------------------------------------
    def visible(self, view: View, include_hidden: bool = True) -> list[Instance]:
        return view_lookups.visible(self.ws, view, include_hidden)

    def selected_instance(self, view: View) -> Instance | None:
        return view_lookups.selected_instance(self.ws, view)

    def refresh(self, view: View) -> View:
        return view_lookups.refresh(self.ws, view)

    # ---- selection ------------------------------------------------------------------------------------
    def check_point(self, view: View, x: float, y: float) -> tuple[int, int]:
        return view_lookups.check_point(self.ws, view, x, y)

    def instances_at(self, view: View, x: int, y: int) -> list[Instance]:
        """Shown, non-hidden instances under (x, y), smallest first."""
        record = self.ws.get_image_record(self.require_image(view))
        scale = preview_scale(record.height, record.width)
        hits = []
        for inst in self.visible(view, include_hidden=False):
            bx, by, bw, bh = inst.bbox
            if not (bx - 1 <= x <= bx + bw and by - 1 <= y <= by + bh):
                continue
            preview = inst.preview
            py, px = min(int(y * scale), preview.shape[0] - 1), min(int(x * scale), preview.shape[1] - 1)
            if preview[py, px]:
                hits.append(inst)
        return sorted(hits, key=lambda inst: inst.area)

    def instance_at(self, view: View, x: int, y: int) -> Instance | None:
        hits = self.instances_at(view, x, y)
        return hits[0] if hits else None

    def select(self, view: View, instance_id: int | None) -> View:
        """Select an instance of the current image by id (None clears the selection)."""
        if instance_id is None:
            return replace(view, selected=None, last_point=None)
        image_id = self.require_image(view)
        try:
            inst = self.ws.get_instance(instance_id)
        except WorkspaceError as exc:
            raise ServiceError(str(exc)) from None
        if inst.image_id != image_id or inst.deleted:
            raise ServiceError(f"Instance {instance_id} is not an instance of this image.")
        return replace(view, selected=inst.id, last_point=None)

    def select_at(self, view: View, x: float, y: float) -> tuple[View, str]:
        """Select what is under a click; clicking the same spot again picks the next instance there."""
        x, y = self.check_point(view, x, y)
        hits = self.instances_at(view, x, y)
        if not hits:
            return replace(view, selected=None, last_point=None, last_pick=None), f"No instance at ({x}, {y})."
        ids = [inst.id for inst in hits]
        again = view.last_pick is not None and abs(view.last_pick[0] - x) <= 3 and abs(view.last_pick[1] - y) <= 3
        chosen = ids[(ids.index(view.selected) + 1) % len(ids)] if again and view.selected in ids else ids[0]
        more = f" ({ids.index(chosen) + 1} of {len(ids)} here: click again for the next one)" if len(ids) > 1 else ""
        return replace(view, selected=chosen, last_point=None, last_pick=(x, y)), f"Selected instance #{chosen}.{more}"

    def check_selection(self, view: View) -> None:
        view_lookups.check_selection(self.ws, view)

    def require_selected(self, view: View) -> Instance:
        return view_lookups.require_selected(self.ws, view)

    # ---- edits -----------------------------------------------------------------------------------------
    def click(self, view: View, x: float, y: float, tool: str, size: int = 15, category_id: int | None = None,
              join: bool = False, overlap: str = "overlap") -> ClickResult:
        """A click on the image with one of TOOLS (`overlap`: the canvas's overlap rule for brush clicks)."""
        if tool not in TOOLS:
            raise ServiceError(f"Unknown tool {tool!r}; use one of {', '.join(TOOLS)}.")
        if tool == "select":
            return ClickResult(*self.select_at(view, x, y), tool)
        if tool in ("brush", "erase"):
            if self.selected_instance(view) is None:  # select what is under the cursor first
                picked, message = self.select_at(view, x, y)
                if picked.selected is None:
                    raise ServiceError(f"Nothing selected and no instance at ({int(x)}, {int(y)}): select an "
                                       "instance, or use 'Paint new' to start one.")
                return ClickResult(picked, message + f" Click again to {'erase' if tool == 'erase' else 'paint'}.", tool)
            return ClickResult(*self.brush(view, x, y, size, erase=tool == "erase", join=join, overlap=overlap), tool)
        if tool == "paint":
            return ClickResult(*self.paint_new(view, x, y, size, category_id), "brush")
        return ClickResult(*self.images.add_at_point(view, x, y, category_id), tool)

    def brush(self, view: View, x: float, y: float, size: int, erase: bool = False, join: bool = False,
              overlap: str = "overlap") -> tuple[View, str]:
        """Paint (or erase) a disc on the selected mask; `join` strokes from the previous click.

        The canvas's edit (`MaskEditor.stroke_points`): a one-point stroke, or a two-point one when joined, under the
        same overlap rule, one undo step."""
        inst = self.require_selected(view)
        x, y = self.check_point(view, x, y)
        previous = view.last_point[1:] if join and view.last_point and view.last_point[0] == inst.id else None
        points = np.array([previous, (x, y)] if previous else [(x, y)], np.float64)
        new_view, message = self.edits.stroke_points(view, "erase" if erase else "brush", points, max(1, int(size)),
                                                     overlap)
        if new_view.selected is None:  # erased all of it: deleted
            return new_view, message
        return replace(new_view, last_point=(inst.id, x, y)), message

    def default_category(self, category_id: int | None) -> int:
        return view_lookups.default_category(self.ws, category_id)

    def paint_new(self, view: View, x: float, y: float, size: int, category_id: int | None = None) -> tuple[View, str]:
        """Start a new hand-painted instance with one disc; it becomes the selection."""
        image_id = self.require_image(view)
        x, y = self.check_point(view, x, y)
        record = self.ws.get_image_record(image_id)
        new_id = self.ws.add_instance(image_id, self.default_category(category_id),
                                      disc((record.height, record.width), x, y, size), source="user")
        return (replace(view, selected=new_id, last_point=(new_id, x, y)),
                f"Added instance #{new_id}; keep clicking with the brush to paint it.")

    def delete_selected(self, view: View) -> tuple[View, str]:
        inst = self.require_selected(view)
        self.ws.delete_instance(inst.id)
        return (replace(view, selected=None, last_point=None, solo=None if view.solo == inst.id else view.solo),
                f"Deleted instance #{inst.id}.")

    def resolve_overlaps(self, view: View, min_iou: float = DEFAULT_MIN_IOU) -> tuple[View, str]:
        """Remove the model's duplicates on the image shown: among the shown instances whose masks overlap by
        >= `min_iou`, keep a person's work, else the best score (`app.annotate.overlaps`); ONE undo step."""
        image_id = self.require_image(view)
        shown = [inst for inst in self.visible(view, include_hidden=False) if not is_crowd(inst)]
        removals = resolve_overlaps(overlap_items(shown), min_iou)
        if not removals:
            return view, f"No overlaps: no two shown instances overlap by IoU {min_iou:.2f} or more."
        self.ws.delete_instances(image_id, [r.remove for r in removals], f"resolve overlaps ({len(removals)})")
        gone = {r.remove for r in removals}
        view = replace(view, selected=None if view.selected in gone else view.selected,
                       solo=None if view.solo in gone else view.solo, last_point=None)
        listed = ", ".join(f"#{r.remove} (IoU {r.iou:.2f} with #{r.kept})" for r in removals[:8])
        more = f" and {len(removals) - 8} more" if len(removals) > 8 else ""
        return view, f"Resolved overlaps: removed {len(removals)} duplicate(s): {listed}{more}. Undo brings them back."

    def set_category(self, view: View, category_id: int | None) -> tuple[View, str]:
        inst = self.require_selected(view)
        if category_id is None:
            raise ServiceError("Choose a class.")
        self.ws.set_category(inst.id, category_id)
        names = {c.id: c.name for c in self.ws.categories()}
        return view, f"Instance #{inst.id} is now {names.get(int(category_id), category_id)!r}."

    def toggle_hidden(self, view: View) -> tuple[View, str]:
        inst = self.require_selected(view)
        self.ws.set_hidden(inst.id, not inst.hidden)
        return view, f"Instance #{inst.id} {'shown' if inst.hidden else 'hidden'}."

    def toggle_solo(self, view: View) -> tuple[View, str]:
        if view.solo is not None:
            return replace(view, solo=None), "Showing all instances."
        inst = self.require_selected(view)
        return replace(view, solo=inst.id), f"Showing only instance #{inst.id}."

    def undo(self, view: View) -> tuple[View, str]:
        """Undo this person's latest edit of the image (never someone else's; see app.store.history)."""
        return self._stepped(view, self.ws.undo(self.require_image(view)), "undo", "Undid")

    def redo(self, view: View) -> tuple[View, str]:
        return self._stepped(view, self.ws.redo(self.require_image(view)), "redo", "Redid")

    def _stepped(self, view: View, entry, verb: str, done: str) -> tuple[View, str]:
        if entry is None:
            return view, f"Nothing to {verb}."
        if entry.blocked:
            raise StaleEdit(f"Cannot {verb} '{entry.label}': {entry.blocked}. Nothing was changed; that step "
                            f"is dropped from your {verb} history.")
        return self.refresh(view), f"{done}: {entry.label}."

    # ---- classes ----------------------------------------------------------------------------------------
    def add_class(self, name: str) -> str:
        """A new class with the next free category id (model classes keep their ids)."""
        category_id = self.ws.add_category(name)
        return f"Added class {str(name).strip()!r} (category id {category_id})."

    def rename_class(self, category_id: int | None, name: str) -> str:
        if category_id is None:
            raise ServiceError("Choose the class to rename.")
        self.ws.rename_category(category_id, name)
        return f"Class {category_id} is now called {str(name).strip()!r}."


def display_to_image(record, x: float, y: float) -> tuple[int, int]:
    """A click on a displayed (preview-size) picture -> original image pixel (x, y)."""
    scale = preview_scale(record.height, record.width)
    return int(np.floor(float(x) / scale)), int(np.floor(float(y) / scale))
