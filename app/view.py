"""What one browser session looks at (`View`) and the lookups every action makes on it.

Plain functions of the workspace and a View: what is visible at the view's threshold and class filter,
the selected instance, the checks of an image, a point or a selection (`ServiceError` with a message for
the user, `StaleEdit` when someone else deleted the selection). Every part of the annotate view uses these.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from app.store.history import StaleEdit, current_user
from app.errors import ServiceError
from app.store.masks import decode_mask
from app.store.workspace import Instance, Workspace, WorkspaceError

DEFAULT_THRESHOLD = 0.3


@dataclass(frozen=True)
class RefineState:
    """A pending proposal: clicks (original pixels), target instance (None = new), proposed mask RLE."""

    target: int | None
    category_id: int | None
    positive: tuple[tuple[int, int], ...]
    negative: tuple[tuple[int, int], ...]
    counts: bytes
    height: int
    width: int

    @property
    def mask(self):
        """(H, W) bool."""
        return decode_mask(self.counts, self.height, self.width)


@dataclass(frozen=True)
class PropagationState:
    """A pending propagation of instance `source` (track `track_id`, class `category_id`) of frame
    `frame_id`: per next frame (image id, mask RLE counts, confidence, (id, revision) of the track's
    instance there or None); `note` says where and why it stopped early (None: all asked frames)."""

    frame_id: int
    source: int
    track_id: int | None
    category_id: int
    frames: tuple[tuple[int, bytes, float, tuple[int, int] | None], ...]
    height: int
    width: int
    note: str | None

    def mask(self, k: int):
        return decode_mask(self.frames[k][1], self.height, self.width)


@dataclass
class View:
    """What one browser session looks at (kept in a gr.State: small and copyable)."""

    image_id: int | None = None
    selected: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    categories: tuple[int, ...] | None = None  # class filter; None shows every class
    solo: int | None = None
    last_point: tuple[int, int, int] | None = None  # (instance id, x, y) of the last brush click
    probe: tuple[int, int] | None = None  # last point explained with "what would segment here"
    opacity: float = 0.45
    labels: bool = True
    last_pick: tuple[int, int] | None = None  # (x, y) of the last selecting click, for cycling
    refine: RefineState | None = None  # a pending click-to-refine proposal (app.annotate.refine)
    propagation: PropagationState | None = None  # a pending video mask propagation (app.video.propagation)
    canvas_image: int | None = None  # the image the canvas editor already holds (its pixels are sent once)
    picture: bool = True  # whether the overlay picture (Click view) is drawn; the page's editor tab turns it off
    seen: dict | None = None  # instance id -> revision this session was last shown (app.store.history: no lost update)
    stamp: tuple | None = None  # what the page shows of the image (app.web.team_page.poll refreshes when it changes)
    state_filter: str | None = None  # show and step through only images in this review state (app.annotate.review)
    explain_relabelled: bool = False  # the Explain pictures carry another model's labels (a SipMask explanation)


def require_image(view: View) -> int:
    if view.image_id is None:
        raise ServiceError("No image selected: upload images or pick samples first.")
    return int(view.image_id)


def visible(ws: Workspace, view: View, include_hidden: bool = True) -> list[Instance]:
    """Instances of the view's image passing the (image's) score threshold, class filter and solo."""
    if view.image_id is None:
        return []
    threshold = ws.get_image_record(view.image_id).threshold(view.threshold)
    return [inst for inst in ws.instances(view.image_id) if inst.shown_at(threshold)
            and (view.categories is None or inst.category_id in view.categories)
            and (view.solo is None or inst.id == view.solo) and (include_hidden or not inst.hidden)]


def selected_instance(ws: Workspace, view: View) -> Instance | None:
    """The selected instance if it still exists, is live and belongs to the image."""
    if view.selected is None or view.image_id is None:
        return None
    try:
        inst = ws.get_instance(view.selected)
    except WorkspaceError:
        return None
    return None if inst.deleted or inst.image_id != view.image_id else inst


def refresh(ws: Workspace, view: View) -> View:
    """Drop a selection / solo that undo or redo removed."""
    view = replace(view, last_point=None)
    if view.selected is not None and selected_instance(ws, view) is None:
        view = replace(view, selected=None)
    if view.solo is not None and selected_instance(ws, replace(view, selected=view.solo)) is None:
        view = replace(view, solo=None)
    return view


def check_point(ws: Workspace, view: View, x: float, y: float) -> tuple[int, int]:
    record = ws.get_image_record(require_image(view))
    try:
        x, y = int(round(float(x))), int(round(float(y)))
    except (TypeError, ValueError, OverflowError):
        raise ServiceError(f"Point ({x}, {y}) is not a pixel position.") from None
    if not (0 <= x < record.width and 0 <= y < record.height):
        raise ServiceError(f"Point ({x}, {y}) is outside the {record.width}x{record.height} image.")
    return x, y


def check_selection(ws: Workspace, view: View) -> None:
    """StaleEdit if someone else deleted the selected instance after this page showed it."""
    if view.selected is None or (view.seen or {}).get(view.selected) is None:
        return
    gone = ws.get_instance(view.selected)
    if gone.deleted and gone.updated_by not in (None, current_user()):
        raise StaleEdit(f"Instance #{gone.id} was deleted by {gone.updated_by} after you last saw it; "
                        "nothing was changed and your view now shows the image as it is.")


def require_selected(ws: Workspace, view: View) -> Instance:
    require_image(view)
    inst = selected_instance(ws, view)
    if inst is None:
        check_selection(ws, view)
        raise ServiceError("Select an instance first (click it on the image or in the table).")
    return inst


def default_category(ws: Workspace, category_id: int | None) -> int:
    if category_id is not None:
        return int(category_id)
    categories = ws.categories()
    if not categories:
        raise ServiceError("The workspace has no classes; add one first.")
    return categories[0].id
