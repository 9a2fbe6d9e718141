"""Mask edits of the canvas editor: strokes, polygons, fill holes, remove specks (View in, View out).

Geometry arrives in original-image pixels (`app.annotate.editing`); every edit is ONE undoable transaction
(`Workspace.edit_masks`), including what the overlap rule does to other instances:
  "overlap"  new pixels are added and other instances keep theirs;
  "over"     new pixels are removed from the other shown instances (CVAT's "remove underlying pixels");
  "under"    new pixels already belonging to another shown instance are not added.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from app.annotate import editing
from app.annotate.editing import Window
from app.errors import ServiceError
from app.store.records import crowd_message, is_crowd
from app.view import (View, check_selection, default_category, require_image, require_selected, selected_instance,
                      visible)
from app.store.workspace_slot import WorkspaceSlot

TOOLS = ("brush", "erase")


class MaskEditor:
    def __init__(self, workspace: WorkspaceSlot):
        self.slot = workspace

    @property
    def ws(self):
        return self.slot.ws

    def _shape(self, image_id: int) -> tuple[int, int]:
        record = self.ws.get_image_record(image_id)
        return record.height, record.width

    def _others(self, view: "View", window: Window, exclude: int | None) -> list:
        """Shown instances other than `exclude` whose box meets the window (crowd regions are left as imported:
        neither cut nor cut around)."""
        y0, x0 = window.y0, window.x0
        h, w = window.patch.shape
        out = []
        for inst in visible(self.ws, view):
            bx, by, bw, bh = inst.bbox
            if inst.id != exclude and not is_crowd(inst) and bx < x0 + w and by < y0 + h and bx + bw > x0 and by + bh > y0:
                out.append(inst)
        return out

    def _apply(self, view: "View", window: Window, shape: tuple[int, int], instance, erase: bool, overlap: str,
               category_id: int | None, label: str) -> tuple["View", str]:
        """Add (erase) a window to `instance` (as read once for this edit), or make a new instance of it (None),
        under the overlap rule; `shape` is the image's (height, width)."""
        image_id = require_image(view)
        target = None if instance is None else instance.id
        changes: dict[int, np.ndarray] = {}
        if not erase and overlap != "overlap":
            others = self._others(view, window, target)
            if overlap == "under":
                for inst in others:
                    window.patch &= ~inst.mask[window.slices]
            else:
                for inst in others:
                    mask = inst.mask
                    before = mask[window.slices].copy()
                    mask[window.slices] &= ~window.patch
                    if not np.array_equal(before, mask[window.slices]):
                        changes[inst.id] = mask
        if target is None:
            if not window.patch.any():
                raise ServiceError("Nothing to add: the shape lies under other instances.")
            category = default_category(self.ws, category_id)
            new_id = self.ws.edit_masks(image_id, changes, label, new=(category, window.full(shape), "user"))
            cut = f"; cut from {len(changes)} other instance(s)" if changes else ""
            return replace(view, selected=new_id, last_point=None, refine=None), f"Added instance #{new_id}{cut}."
        if is_crowd(instance):  # say so even when the stroke would change nothing
            raise ServiceError(crowd_message(target))
        mask = instance.mask
        before = mask[window.slices].copy()
        editing.paint(mask, window, erase)
        if np.array_equal(before, mask[window.slices]) and not changes:
            return view, f"No change: the {'eraser' if erase else 'shape'} did not change instance #{target}."
        changes[target] = mask
        self.ws.edit_masks(image_id, changes, label)
        if not mask.any():
            return (replace(view, selected=None, last_point=None, refine=None),
                    f"Erased all of instance #{target}; it was deleted (Undo brings it back).")
        cut = f"; cut from {len(changes) - 1} other instance(s)" if len(changes) > 1 else ""
        return replace(view, last_point=None, refine=None), f"{'Erased from' if erase else 'Painted'} instance " \
                                                            f"#{target}{cut}."

    def stroke(self, view: "View", tool: str, points, width, overlap: str = "overlap",
               category_id: int | None = None) -> tuple["View", str]:
        """A brush / eraser drag on the selected instance; a brush drag with nothing selected makes a new one."""
        return self.stroke_points(view, tool, editing.parse_points(points, "stroke"), editing.check_width(width),
                                  overlap, category_id)

    def stroke_points(self, view: "View", tool: str, pts: np.ndarray, size: int, overlap: str = "overlap",
                      category_id: int | None = None) -> tuple["View", str]:
        """`stroke` of checked points ((N, 2) x, y) and a whole width >= 1 (the Click view's brush click: one
        point, or two when joined to the previous click)."""
        if tool not in TOOLS:
            raise ServiceError(f"Unknown stroke tool {tool!r}; use brush or erase.")
        image_id = require_image(view)
        overlap = editing.check_overlap(overlap)
        selected = selected_instance(self.ws, view)
        if selected is None:
            check_selection(self.ws, view)  # deleted meanwhile by someone else: no new instance
        if selected is None and tool == "erase":
            raise ServiceError("Select the instance to erase from first.")
        shape = self._shape(image_id)
        window = editing.stroke_window(pts, size, shape)
        if window is None:
            raise ServiceError("The stroke lies outside the image.")
        return self._apply(view, window, shape, selected, tool == "erase", overlap, category_id,
                           f"{tool} stroke" + (f" on instance {selected.id}" if selected else ": new instance"))

    def polygon(self, view: "View", points, mode: str = "new", category_id: int | None = None,
                overlap: str = "overlap") -> tuple["View", str]:
        """A closed polygon: a new instance, added to the selected one or cut from it."""
        if mode not in editing.POLYGON_MODES:
            raise ServiceError(f"Unknown polygon mode {mode!r}; use one of {', '.join(editing.POLYGON_MODES)}.")
        image_id = require_image(view)
        pts = editing.parse_points(points, "polygon", minimum=3)
        overlap = editing.check_overlap(overlap)
        selected = None
        if mode != "new":
            selected = selected_instance(self.ws, view)
            if selected is None:
                raise ServiceError(f"Select the instance to {mode} the polygon {'to' if mode == 'add' else 'from'}.")
        shape = self._shape(image_id)
        window = editing.polygon_window(pts, shape)
        if window is None:
            raise ServiceError("The polygon lies outside the image.")
        return self._apply(view, window, shape, selected, mode == "cut", overlap, category_id, f"polygon ({mode})")

    def fill_holes(self, view: "View") -> tuple["View", str]:
        inst = require_selected(self.ws, view)
        mask = editing.fill_holes(inst.mask)
        added = int(mask.sum()) - inst.area
        if not added:
            return view, f"Instance #{inst.id} has no holes."
        self.ws.edit_masks(inst.image_id, {inst.id: mask}, f"fill holes of instance {inst.id}")
        return view, f"Filled {added} px of holes in instance #{inst.id}."

    def remove_specks(self, view: "View", min_pixels) -> tuple["View", str]:
        inst = require_selected(self.ws, view)
        try:
            min_pixels = int(min_pixels)
        except (TypeError, ValueError):
            raise ServiceError(f"The speck size must be a whole number of pixels, got {min_pixels!r}.") from None
        if min_pixels < 1:
            raise ServiceError("The speck size must be at least 1 pixel.")
        mask = editing.remove_specks(inst.mask, min_pixels)
        removed = inst.area - int(mask.sum())
        if not removed:
            return view, f"Instance #{inst.id} has no parts under {min_pixels} px."
        self.ws.edit_masks(inst.image_id, {inst.id: mask}, f"remove specks of instance {inst.id}")
        return view, f"Removed {removed} px of specks under {min_pixels} px from instance #{inst.id}."
