"""Click-to-refine in the app: the pending proposal in the View, and refine / accept / discard.

The math (candidates from the clicks, local correction, boundary snapping to the image, clicks as hard
constraints) is CondInst's and lives in `condinst.refine`; this module keeps the app state: the clicks
so far and the proposed mask wait in the View (as RLE) until accepted (Enter, `/refine_accept`) or
discarded (Esc). A later click refines the pending proposal (or the selected instance's mask) locally.
"""
from __future__ import annotations

from dataclasses import replace

from app.annotate.editing import parse_points
from app.errors import ServiceError
from app.annotate.images import ImageLibrary
from app.store.masks import encode_mask
from app.model.session import ModelSession
from app.view import RefineState, View, check_point, default_category, require_image, selected_instance
from app.store.workspace_slot import WorkspaceSlot


class Refiner:
    """Refine / accept / discard on a View (see the module docstring)."""

    def __init__(self, workspace: WorkspaceSlot, session: ModelSession, images: ImageLibrary):
        self.slot, self.session, self.images = workspace, session, images

    @property
    def ws(self):
        return self.slot.ws

    def refine(self, view: "View", positive, negative, category_id: int | None = None) -> tuple["View", str]:
        """Propose a mask for the clicks: of the selected instance, or of a new one if none is selected."""
        images = self.images
        image_id = require_image(view)
        pos = [check_point(self.ws, view, x, y) for x, y in parse_points(positive, "positive", minimum=0)]
        neg = [check_point(self.ws, view, x, y) for x, y in parse_points(negative, "negative", minimum=0)]
        pending = view.refine
        if pending is not None:
            target, category = pending.target, pending.category_id
        else:
            selected = selected_instance(self.ws, view)
            target, category = (selected.id if selected else None), category_id
        if not pos and target is None:
            raise ServiceError("Click inside the object first (a left click): with nothing selected, refine "
                               "needs a positive click.")
        if not pos and not neg:
            raise ServiceError("Give at least one refine click.")
        if pending is not None:  # the proposal so far keeps later clicks local
            prior = pending.mask
        else:
            prior = self.ws.get_instance(target).mask if target is not None else None
        session = self.session
        done = () if pending is None else ([(tuple(p), True) for p in pending.positive]
                                           + [(tuple(p), False) for p in pending.negative])
        full, class_index = session.refine(images.image_key(image_id), lambda: self.ws.get_image(image_id), pos, neg,
                                           prior, done)
        if target is None and category is None:  # (pos is not empty here)
            category = session.category_id(class_index)
        if not full.any():
            raise ServiceError("The clicks select no pixels; click inside the object.")
        record = self.ws.get_image_record(image_id)
        state = RefineState(target, category, tuple(pos), tuple(neg), encode_mask(full), record.height, record.width)
        what = f"instance #{target}" if target is not None else "a new instance"
        return (replace(view, refine=state),
                f"Refine proposal for {what}: {int(full.sum())} px from {len(pos)} positive / {len(neg)} negative "
                "click(s). Enter accepts, Esc discards.")

    def accept(self, view: "View") -> tuple["View", str]:
        pending = view.refine
        if pending is None:
            raise ServiceError("Nothing to accept: click on an object with the refine tool first.")
        image_id = require_image(view)
        ws = self.ws
        if pending.target is not None:
            if selected_instance(self.ws, replace(view, selected=pending.target)) is None:
                raise ServiceError(f"Instance #{pending.target} no longer exists; discard the proposal.")
            ws.edit_masks(image_id, {pending.target: pending.mask}, f"refine instance {pending.target}")
            return replace(view, refine=None, selected=pending.target), f"Refined instance #{pending.target}."
        category = default_category(self.ws, pending.category_id)
        new_id = ws.edit_masks(image_id, {}, "refine: new instance", new=(category, pending.mask, "point"))
        return replace(view, refine=None, selected=new_id), f"Added instance #{new_id} from the refine clicks."

    def discard(self, view: "View") -> tuple["View", str]:
        return replace(view, refine=None), ("Discarded the refine proposal." if view.refine else "Nothing to discard.")
