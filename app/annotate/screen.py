"""What the annotate view shows for a `View`: the overlay picture, the instance table, the image list.

Everything is drawn at display size from stored previews (`Workspace.get_preview`,
`Instance.preview`): no full-size image or mask is decoded to show a screen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.annotate import render
from app.store.masks import PREVIEW_MAX_SIDE, preview_size, shrink_mask
from app.store.records import is_crowd
from app.video.sequences import SequenceLibrary, representatives
from app.model.session import level_name
from app.view import View, selected_instance, visible
from app.store.workspace_slot import WorkspaceSlot

TABLE_HEADERS = ["id", "class", "score", "area", "FPN level", "source", "state", "track"]


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


def image_label(record) -> str:
    """Image list entry: '3: name.jpg (reviewed)'."""
    flags = [record.state] if record.state else []
    if record.segmented_by is None:
        flags.append("not segmented")
    return f"{record.id}: {record.original_name}" + (f" ({', '.join(flags)})" if flags else "")


def sequence_label(record, sequence) -> str:
    """Image list entry of a video: '3: clip.mp4 (video, 120 frames)'."""
    return f"{record.id}: {sequence.name} (video, {sequence.num_frames} frames)"


class Screens:
    def __init__(self, workspace: WorkspaceSlot, sequences: SequenceLibrary):
        self.slot, self.sequences = workspace, sequences

    @property
    def ws(self):
        return self.slot.ws

    def image_choices(self, images=None, current: int | None = None) -> list[tuple[str, int]]:
        """The image list: a video sequence is one entry (its shown frame, else its first)."""
        images = self.ws.list_images() if images is None else images
        sequences = {s.id: s for s in self.sequences.all()} if any(i.sequence_id for i in images) else {}
        return [(sequence_label(img, sequences[img.sequence_id]) if img.sequence_id else image_label(img), img.id)
                for img in representatives(images, current)]

    def table_rows(self, view: View) -> list[list]:
        names = {c.id: c.name for c in self.ws.categories()}
        rows = []
        for inst in visible(self.ws, view):
            meta = inst.meta or {}
            state = ", ".join(flag for flag, on in (("crowd", is_crowd(inst)), ("hidden", inst.hidden),
                                                    ("edited", inst.user_edited)) if on)
            rows.append([inst.id, names.get(inst.category_id, str(inst.category_id)),
                         "" if inst.score is None else round(float(inst.score), 3), inst.area,
                         level_name(meta["fpn_level"]) if "fpn_level" in meta else "", inst.source, state,
                         "" if inst.track_id is None else inst.track_id])  # a video frame's track (app.video.tracks)
        return rows

    def overlay(self, view: View) -> np.ndarray | None:
        """The current image at display size with its shown, non-hidden instances drawn."""
        if view.image_id is None:
            return None
        ws = self.ws
        names = {c.id: c.name for c in ws.categories()}
        items = []
        for inst in visible(self.ws, view, include_hidden=False):
            label = f"#{inst.id} {names.get(inst.category_id, inst.category_id)}"
            if inst.score is not None:
                label += f" {inst.score:.2f}"
            if inst.user_edited or inst.source != "model":
                label += " *"
            if is_crowd(inst):
                label += " crowd"
            if inst.track_id is not None:
                label += f" T{inst.track_id}"
            items.append(render.DrawItem(inst.id, inst.preview, label))
        if view.refine is not None:  # a pending click-to-refine proposal
            record = ws.get_image_record(view.image_id)
            items.append(render.DrawItem(-1, shrink_mask(view.refine.mask, preview_size(record.height, record.width)),
                                         "refine proposal (Enter accepts)"))
        return render.draw_instances(ws.get_preview(view.image_id), items, view.selected, PREVIEW_MAX_SIDE,
                                     opacity=view.opacity, labels=view.labels)

    def screen(self, view: View) -> Screen:
        if self.slot.workspace is None or view.image_id is None:
            return Screen(None, [], self.image_choices() if self.slot.workspace is not None else [], None, False, None,
                          None, "No image yet: upload images or pick samples; they are segmented at once.", False, False)
        ws = self.ws
        record = ws.get_image_record(view.image_id)
        images = ws.list_images()
        rows = self.table_rows(view)
        stored = len(ws.instances(view.image_id))
        selected = selected_instance(ws, view)
        threshold = record.threshold(view.threshold)
        frozen = " (frozen at review)" if record.review_threshold is not None else ""
        items = representatives(images, record.id)
        position = [img.id for img in items].index(record.id) + 1
        where = "" if record.sequence_id is None else f" frame {record.frame_index}"
        info = (f"**{record.original_name}** - image {position} of {len(items)}{where} - {record.width}x{record.height} - "
                f"{len(rows)} shown of {stored} instances (score >= {threshold:.2f}{frozen})")
        if record.state:
            info += f" - **{record.state}**"
        unreviewed = sum(not img.reviewed for img in images)
        info += f" - {unreviewed} image(s) to review"
        if view.solo is not None:
            info += f" - solo #{view.solo}"
        if selected is not None:
            info += f" - selected #{selected.id}"
            if is_crowd(selected):
                info += (" - **a crowd region** (COCO iscrowd): kept and exported as imported; its mask and class "
                         "cannot be edited (hide or delete it instead)")
        listed = [img for img in images if view.state_filter in (None, img.review_state)]  # a reviewer's filter
        return Screen(self.overlay(view) if view.picture else None, rows, self.image_choices(listed, record.id),
                      record.id,
                      record.reviewed, selected.id if selected else None, selected.category_id if selected else None,
                      info, ws.can_undo(record.id), ws.can_redo(record.id))
