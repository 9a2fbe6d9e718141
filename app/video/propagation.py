"""Propagate the selected instance of a video frame to the next frames: preview, accept, discard.

    view, message = service.propagation.preview(view, num_frames=10)   # masks wait in view.propagation
    view, message = service.propagation.accept(view)                  # stored: ONE undo step of the person
    view, message = service.propagation.discard(view)

The masks come from `condinst.video.propagate` (the instance's own CondInst filters, re-centred where
it moves; it stops when the instance is lost). On each next frame the propagated mask replaces the
mask of the instance's track there, or becomes a new instance of that track (and class).

What the preview stops before, so that accepting can never overwrite work silently:
  * a reviewed frame (the workspace re-segments none; propagation does not change them either);
  * a frame where the track's instance was edited by someone else (their work; the stale-edit rule);
  * a frame whose track instance is a crowd region.
Accepting writes every frame in ONE transaction and pushes ONE undo entry of the acting person on the
frame shown (as the track operations do); an instance someone changed between preview and accept
refuses the whole accept with the workspace's stale-edit message (nothing is written).
"""
from __future__ import annotations

from dataclasses import replace

from app.store import history, storage, video_store
from app.errors import ServiceError
from app.store.masks import encode_mask
from app.store.records import is_crowd, refuse_crowd
from app.video.sequences import SequenceLibrary
from app.model.session import ModelSession
from app.view import PropagationState, View, require_image, selected_instance
from app.store.workspace_slot import WorkspaceSlot
from condinst.video.propagate import PropagationError, propagate

MAX_FRAMES = 50  # frames one preview may cover


class Propagator:
    """Preview / accept / discard on a View (see the module docstring)."""

    def __init__(self, workspace: WorkspaceSlot, session: ModelSession, sequences: SequenceLibrary):
        self.slot, self.session, self.sequences = workspace, session, sequences

    @property
    def ws(self):
        return self.slot.ws

    def preview(self, view: "View", num_frames: int = 10) -> tuple["View", str]:
        ws = self.ws
        image_id = require_image(view)
        record = ws.get_image_record(image_id)
        if record.sequence_id is None:
            raise ServiceError("Propagation works on video frames: this image is not part of a video.")
        session = self.session
        if not session.explains:
            raise ServiceError("Propagation needs the PyTorch CondInst model (.pth); this model gives detections only.")
        if session.is_sipmask:
            raise ServiceError("Propagation needs a CondInst model: SipMask has no per-instance mask filters to "
                               "carry to the next frames.")
        inst = selected_instance(self.ws, view)
        if inst is None:
            raise ServiceError("Select the instance to propagate first (click it on this frame).")
        if not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES:
            raise ServiceError(f"Propagate over 1 to {MAX_FRAMES} frames, not {num_frames!r}.")
        ids = self.sequences.frame_ids(record.sequence_id)[record.frame_index + 1:][:num_frames]
        targets, note = self._writable(ids, inst.track_id)
        if not targets:
            raise ServiceError(note or "This is the last frame of the video: there is nothing to propagate to.")
        frames = (ws.get_image(frame_id) for frame_id, _ in targets)
        with session.lock:
            try:
                out = propagate(session.predictor, ws.get_image(image_id), inst.mask, frames, len(targets))
            except PropagationError as exc:
                raise ServiceError(f"Cannot propagate: {exc}.") from None
        if not out.frames:
            raise ServiceError(f"Nothing to propagate: {out.stopped}.")
        kept = tuple((targets[p.offset - 1][0], encode_mask(p.mask), p.confidence, targets[p.offset - 1][1])
                     for p in out.frames)
        if out.stopped is not None:
            note = out.stopped
        state = PropagationState(image_id, inst.id, inst.track_id, inst.category_id, kept, record.height,
                                 record.width, note)
        low = min(c for _, _, c, _ in kept)
        return (replace(view, propagation=state),
                f"Propagation preview of instance #{inst.id}: {len(kept)} frame(s), lowest confidence {low:.2f}"
                + (f"; stopped: {note}" if note else "") + ". Accept stores them, discard drops them.")

    def _writable(self, frame_ids: list[int], track_id: int | None) -> tuple[list[tuple[int, tuple | None]], str | None]:
        """(frame id, (id, revision) of the track's live instance there or None) of the frames that may
        be written, up to the first that may not, and why not (None when all may)."""
        ws, me = self.ws, history.current_user()
        out = []
        for frame_id in frame_ids:
            record = ws.get_image_record(frame_id)
            if record.reviewed:
                return out, f"frame {record.frame_index} is reviewed (propagation does not change reviewed frames)"
            mine = [i for i in ws.instances(frame_id) if track_id is not None and i.track_id == track_id
                    and not i.deleted]
            target = mine[0] if mine else None
            if target is not None and target.user_edited and target.updated_by not in (None, me):
                return out, (f"frame {record.frame_index}: instance #{target.id} of this track was "
                             f"{history.changed_by({'updated_by': target.updated_by, 'updated_at': target.updated_at})}"
                             " (their edit is kept)")
            if target is not None and is_crowd(target):
                return out, f"frame {record.frame_index}: instance #{target.id} is a crowd region"
            out.append((frame_id, None if target is None else (target.id, target.revision)))
        return out, None

    def accept(self, view: "View") -> tuple["View", str]:
        pending = view.propagation
        if pending is None:
            raise ServiceError("Nothing to accept: preview a propagation first.")
        ws = self.ws
        track_id = pending.track_id
        with ws.db.write() as conn:  # any refusal below rolls the whole accept back
            if track_id is None:  # an instance on no track starts one, so its frames stay linked
                track_id = video_store.next_track(conn, ws.get_image_record(pending.frame_id).sequence_id)
                changes = [history.update(conn, pending.source, {"track_id": track_id})]
            else:
                changes = []
            for k, (frame_id, _, _, target) in enumerate(pending.frames):
                self._check_unchanged(conn, frame_id, track_id, target)
                enc = storage.encode(pending.mask(k), pending.height, pending.width)
                if target is not None:
                    changes.append(history.update(conn, target[0], {**history.mask_fields(enc), "user_edited": 1}))
                    continue
                _, created = storage.insert_instance(conn, frame_id, pending.category_id, enc, "user", None, None,
                                                     track_id=track_id, user_edited=True)
                changes.append(created)  # undo deletes it, redo brings it back
            history.push(conn, pending.frame_id, f"propagate instance {pending.source}", changes, ws.history_limit)
        return (replace(view, propagation=None),
                f"Propagated instance #{pending.source} to {len(pending.frames)} frame(s) (one undo step).")

    @staticmethod
    def _check_unchanged(conn, frame_id: int, track_id: int, target: tuple[int, int] | None) -> None:
        """StaleEdit (nothing written) if the frame was reviewed or its track instance changed since the preview."""
        frame = storage.image_record(conn, frame_id)
        index = frame.frame_index
        if frame.reviewed:
            raise history.StaleEdit(f"Frame {index} was reviewed after the preview; nothing was changed: "
                                    "preview again.")
        if target is None:
            joined = video_store.track_instance_on(conn, frame_id, track_id)
            if joined is not None:
                raise history.StaleEdit(f"Instance #{joined} joined this track on frame {index} after the preview; "
                                        "nothing was changed: preview again.")
            return
        row = history.row(conn, target[0])
        if row["revision"] != target[1] or row["deleted"]:
            raise history.StaleEdit(f"Instance #{target[0]} on frame {index} was {history.changed_by(row)} after the "
                                    "preview; nothing was changed: preview again.")
        refuse_crowd(row)

    def discard(self, view: "View") -> tuple["View", str]:
        return (replace(view, propagation=None),
                "Discarded the propagation preview." if view.propagation else "Nothing to discard.")
