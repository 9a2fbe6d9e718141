"""Track operations on a video sequence: fix a track's class once for all frames, merge, split, assign.

    service.tracks.tracks(sequence_id)                       # [TrackSummary] (id, class, frames)
    service.tracks.set_class(frame_id, track_id, category)   # every frame of the track
    service.tracks.merge(frame_id, keep=A, into=B)           # B's instances join track A
    service.tracks.split(frame_id, track_id, frame_index)    # frames >= frame_index get a new track id
    service.tracks.assign(instance_id, track_id | None)      # a drawn instance joins a track (None: new one)

`frame_id` is the frame (image id) the person is looking at: each operation is ONE undo step of
that person on that frame (`app.store.history`, per person and image), whatever the number of frames it
changes, and follows the team rules: an instance someone else changed since the person last saw it
refuses the whole operation (`StaleEdit`), crowd regions refuse class changes, and editing a
reviewed frame marks it "changed after review". Only live (not deleted) instances take part; the
instances a person changes this way are `user_edited`, so re-running the model keeps them.

Track ids are per sequence; a split's new track is the sequence's largest track id + 1.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from app.store import history, storage, video_store
from app.errors import ServiceError
from app.store.records import check_id, refuse_crowd
from app.store.workspace_slot import WorkspaceSlot


@dataclass(frozen=True)
class TrackSummary:
    """One track of a sequence: its id, the category most of its frames have, the frames it is on."""

    id: int
    category_id: int
    frames: tuple[int, ...]

    @property
    def span(self) -> str:
        return f"{self.frames[0]}-{self.frames[-1]}" if len(self.frames) > 1 else str(self.frames[0])


class TrackEditor:
    """Track operations of a service's workspace (see the module docstring)."""

    def __init__(self, workspace: WorkspaceSlot):
        self.slot = workspace

    @property
    def ws(self):
        return self.slot.ws

    def frame(self, image_id: int) -> tuple[int, int]:
        """(sequence id, frame index) of a frame; ServiceError for a still image."""
        record = self.ws.get_image_record(image_id)
        if record.sequence_id is None:
            raise ServiceError(f"Image {image_id} is not a video frame: track operations apply to video sequences.")
        return record.sequence_id, record.frame_index

    # ---- reading -----------------------------------------------------------------------------------
    def tracks(self, sequence_id: int) -> list[TrackSummary]:
        with self.ws.db.read() as conn:
            rows = video_store.track_rows(conn, sequence_id)
        by_track: dict[int, list[tuple[int, int]]] = {}
        for track_id, frame_index, category_id in rows:
            by_track.setdefault(track_id, []).append((frame_index, category_id))
        return [TrackSummary(track_id, track_category([c for _, c in items]), tuple(f for f, _ in items))
                for track_id, items in by_track.items()]

    # ---- operations --------------------------------------------------------------------------------
    def set_class(self, frame_id: int, track_id: int, category_id: int) -> str:
        """Give every live instance of the track the category (one undo step on `frame_id`)."""
        sequence_id, _ = self.frame(frame_id)
        category_id = check_id(category_id, "Category id")
        if category_id not in {c.id for c in self.ws.categories()}:
            raise ServiceError(f"Category {category_id} does not exist; add it first.")
        with self.ws.db.write() as conn:
            members = self._members(conn, sequence_id, track_id)
            ids = [iid for iid, _, category in members if category != category_id]
            for iid in ids:
                refuse_crowd(history.row(conn, iid))
            self._apply(conn, frame_id, {iid: {"category_id": category_id} for iid in ids},
                        f"class of track {track_id}")
        return (f"Track {track_id}: class set on {len(ids)} frame(s)" if ids
                else f"Track {track_id} already has this class on every frame.")

    def merge(self, frame_id: int, keep: int, into: int) -> str:
        """Track `into` joins track `keep` (refused when both have an instance on one frame, naming it)."""
        sequence_id, _ = self.frame(frame_id)
        keep, into = check_id(keep, "Track id"), check_id(into, "Track id")
        if keep == into:
            raise ServiceError("Pick two different tracks to merge.")
        with self.ws.db.write() as conn:
            kept, joining = self._members(conn, sequence_id, keep), self._members(conn, sequence_id, into)
            both = sorted({f for _, f, _ in kept} & {f for _, f, _ in joining})
            if both:
                raise ServiceError(f"Tracks {keep} and {into} cannot be merged: both have an instance on frame "
                                   f"{both[0]}" + (f" (and {len(both) - 1} more frame(s))" if len(both) > 1 else "")
                                   + "; delete or split one of them there first.")
            self._apply(conn, frame_id, {iid: {"track_id": keep} for iid, _, _ in joining},
                        f"merge track {into} into {keep}")
        return f"Track {into} merged into track {keep} ({len(joining)} frame(s))."

    def split(self, frame_id: int, track_id: int, frame_index: int) -> str:
        """Frames >= `frame_index` of the track get a new track id (the sequence's largest + 1)."""
        sequence_id, _ = self.frame(frame_id)
        frame_index = int(frame_index)
        with self.ws.db.write() as conn:
            members = self._members(conn, sequence_id, track_id)
            later = [iid for iid, f, _ in members if f >= frame_index]
            if not later or len(later) == len(members):
                raise ServiceError(f"Track {track_id} has frames {members[0][1]} to {members[-1][1]}: split it at a "
                                   f"frame after its first one and not after its last one, not at {frame_index}.")
            new_id = video_store.next_track(conn, sequence_id)
            self._apply(conn, frame_id, {iid: {"track_id": new_id} for iid in later},
                        f"split track {track_id} at frame {frame_index}")
        return f"Track {track_id} split at frame {frame_index}: frames {frame_index}+ are track {new_id}."

    def assign(self, instance_id: int, track_id: int | None) -> str:
        """Put an instance of a frame on a track (None: a new track); refused if the track is on that frame."""
        inst = self.ws.get_instance(instance_id)
        sequence_id, frame_index = self.frame(inst.image_id)
        with self.ws.db.write() as conn:
            if track_id is None:
                track_id = video_store.next_track(conn, sequence_id)
            track_id = check_id(track_id, "Track id")
            if track_id == inst.track_id:
                return f"Instance #{inst.id} is already on track {track_id}."
            taken = [iid for iid, f, _ in video_store.live_track(conn, sequence_id, track_id) if f == frame_index]
            if taken:
                raise ServiceError(f"Track {track_id} already has instance #{taken[0]} on frame {frame_index}; "
                                   "delete it or pick another track.")
            self._apply(conn, inst.image_id, {inst.id: {"track_id": track_id}},
                        f"instance {inst.id} to track {track_id}")
        return f"Instance #{inst.id} is now on track {track_id}."

    # ---- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _members(conn, sequence_id: int, track_id: int) -> list[tuple[int, int, int]]:
        members = video_store.live_track(conn, sequence_id, check_id(track_id, "Track id"))
        if not members:
            raise ServiceError(f"Sequence {sequence_id} has no track {track_id}.")
        return members

    def _apply(self, conn, frame_id: int, values: dict[int, dict], label: str) -> None:
        """Write each instance's new values (stale-checked), mark their frames, push ONE undo entry."""
        changes, frames = [], set()
        for instance_id, changed in values.items():
            change = history.update(conn, instance_id, {**changed, "user_edited": 1})
            changes.append(change)
            frames.add(history.row(conn, instance_id)["image_id"])
        for image_id in frames:
            storage.touch_review(conn, image_id)
        history.push(conn, int(frame_id), label, changes, self.ws.history_limit)


def track_category(categories: list[int]) -> int:
    """A track's category: the one most of its frames have (the smallest id on a tie)."""
    counts = Counter(categories)
    return min(counts, key=lambda c: (-counts[c], c))
