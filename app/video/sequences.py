"""Videos in the workspace: a video becomes a SEQUENCE of frame images with the tracker's predictions.

    service.sequences.add_video("clip.mp4")     # decode (streamed), segment, track, store: all or nothing
    service.sequences.get(sequence_id)          # SequenceRecord: name, fps, frame count, size
    service.sequences.frame_ids(sequence_id)    # image ids of its frames, in order

Storage (schema v4, `app.store.db`; rows written by `app.store.video_store` and `storage.add_image_row`): one
`sequences` row (name, the video file's sha256, fps, frame count, size, tracker); each frame an `images` row with `sequence_id` / `frame_index`, its file
`images/<video sha256[:16]>-<frame index>.png` (the decoded frame, lossless: the pixels the model
saw); each TRACKED prediction an `instances` row with the `track_id` the tracker gave it: what
`python -m condinst video` outputs. Detections the tracker left out (the model's duplicates of a
tracked object, ones scoring under its `new_track_score`) are not stored: they would be one-frame
tracks in the YouTube-VIS export and noise to delete on every frame (app/README.md, Videos).

The frames are segmented and linked by the library (`condinst.video`: reader, segmenter, CondInst's
own tracker) with the app's model, one batch at a time under the model lock. All or nothing: each
frame's file is written (atomically) into this process's staging folder (`app.store.staging`) as it is
decoded; after the last frame, ONE transaction moves them into images/ and adds the rows (sequence,
frames, instances). A failing upload removes its frames at once; a killed one leaves them in its
staging folder, which the next start's sweep removes (and never a running upload's). Memory: one
batch of frames plus the predictions' RLEs, whatever the length; at most `max_frames` frames
(`--max-video-frames`).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app.store import storage, video_store
from app.store.db import now
from app.errors import AppError, ServiceError
from app.store.ingest import prepare_array, sanitize_file_name
from app.store.records import ImageRecord
from app.store.video_store import SequenceRecord
from app.model.session import ModelSession
from app.store.workspace_slot import WorkspaceSlot
from condinst.io import atomic_write_bytes, fsync_dir

logger = logging.getLogger(__name__)
DEFAULT_MAX_FRAMES = 300
BATCH_SIZE = 4
VIDEO_TYPES = (".mp4", ".avi", ".webm", ".mkv", ".mov")  # what the upload area offers
Progress = Callable[[int, int], None]


@dataclass
class VideoReport:
    """What adding one video did: the sequence, its first frame, and the counts."""

    sequence_id: int
    first_image: int
    frames: int
    instances: int
    tracks: int
    existed: bool = False

    @property
    def message(self) -> str:
        if self.existed:
            return f"Video sequence {self.sequence_id} is already in the workspace ({self.frames} frames)."
        return (f"Added video sequence {self.sequence_id}: {self.frames} frames, {self.instances} instance(s) in "
                f"{self.tracks} track(s).")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SequenceLibrary:
    """The workspace's video sequences: adding videos, reading sequences and their frames."""

    def __init__(self, workspace: WorkspaceSlot, session: ModelSession, max_frames: int = DEFAULT_MAX_FRAMES):
        self.slot, self.session = workspace, session
        self.max_frames = int(max_frames)

    @property
    def ws(self):
        return self.slot.ws

    # ---- reading -----------------------------------------------------------------------------------
    def get(self, sequence_id: int) -> SequenceRecord:
        with self.ws.db.read() as conn:
            return video_store.sequence_of(conn, sequence_id)

    def all(self) -> list[SequenceRecord]:
        with self.ws.db.read() as conn:
            return video_store.sequences(conn)

    def frame_ids(self, sequence_id: int) -> list[int]:
        """Image ids of the sequence's frames, in frame order."""
        with self.ws.db.read() as conn:
            return video_store.frame_ids(conn, sequence_id)

    def frame_id(self, sequence_id: int, frame_index: int) -> int:
        ids = self.frame_ids(sequence_id)
        if not 0 <= int(frame_index) < len(ids):
            raise ServiceError(f"Sequence {sequence_id} has frames 0 to {len(ids) - 1}, not {frame_index}.")
        return ids[int(frame_index)]

    # ---- adding ------------------------------------------------------------------------------------
    def add_video(self, path: str | Path, progress: Progress | None = None) -> VideoReport:
        """Decode, segment and track a video, then store it whole (see the module docstring)."""
        from condinst.video.reader import VideoError, open_video

        path = Path(path)
        name = sanitize_file_name(path.name, default="video")
        try:
            source = open_video(path)
        except VideoError as exc:
            raise ServiceError(f"{name}: {_reason(exc, path)}") from None
        info = source.info
        if info.num_frames is not None and info.num_frames > self.max_frames:
            raise ServiceError(f"{name} has {info.num_frames} frames; the app takes videos of at most {self.max_frames} "
                               "frames (--max-video-frames): cut it or raise the limit.")
        sha = file_sha256(path)
        with self.ws.db.read() as conn:
            stored = video_store.find_sequence(conn, sha)
        if stored is not None:
            return VideoReport(stored.id, self.frame_ids(stored.id)[0], stored.num_frames, 0, 0, existed=True)
        with self.ws.stage.folder("video") as folder:  # removed afterwards, whatever happens
            try:
                frames = self._segment(source, sha[:16], name, folder, progress)
            except VideoError as exc:
                raise ServiceError(f"{name}: {_reason(exc, path)}") from None
            return self._store(name, sha, info, frames, folder)

    def _segment(self, source, token: str, name: str, folder: Path, progress: Progress | None) -> list:
        """[(frame file, its preview or None, name, digest, predictions, {detection row: track id})] per frame,
        the files written into the staging `folder`."""
        from condinst.video.pipeline import make_tracker
        from condinst.video.segmenter import segment_frames
        from condinst.video.tracker import TrackerConfig

        session, ws = self.session, self.ws
        try:
            tracker = make_tracker("condinst", session.predictor, TrackerConfig())
        except ValueError as exc:
            raise ServiceError(f"{name}: cannot track a video with this model: {exc}.") from None
        stem = Path(name).stem
        frames, out = segment_frames(session.predictor, self._capped(source, name), BATCH_SIZE), []
        total = source.info.num_frames or self.max_frames
        while True:
            with session.lock:  # other sessions' model calls run between frames
                frame = next(frames, None)
                if frame is None:
                    break
                assignments = tracker.update(frame)
            tracks = {row: track_id for track_id, row in assignments}
            predictions = session.to_predictions(frame.result, frame.image, rows=set(tracks))  # the rows stored
            prepared = prepare_array(frame.image, ws.max_pixels, f"{stem}_{frame.index:05d}.png")
            relative = f"{ws.images_dir.name}/{token}-{frame.index:05d}.png"
            preview = f"{ws.previews_dir.name}/{token}-{frame.index:05d}.jpg" if prepared.preview_jpeg else None
            try:
                atomic_write_bytes(folder / Path(relative).name, prepared.data)
                if preview is not None:
                    atomic_write_bytes(folder / Path(preview).name, prepared.preview_jpeg)
            except OSError as exc:
                raise ServiceError(f"Cannot write into {folder}: {exc.strerror}") from None
            out.append((relative, preview, prepared.name, f"{prepared.sha256}@{token}/{frame.index}", predictions,
                        tracks))
            if progress is not None:
                progress(frame.index, max(total, frame.index + 1))  # frame.index + 1 of total done
        return out

    def _capped(self, source, name: str):
        """The source's frames, refusing the video once it runs past `max_frames` (count unknown up front)."""
        for index, frame in enumerate(source.frames()):
            if index >= self.max_frames:
                raise ServiceError(f"{name} has more than {self.max_frames} frames; the app takes videos of at most "
                                   f"{self.max_frames} frames (--max-video-frames): cut it or raise the limit.")
            yield frame

    def _store(self, name: str, sha: str, info, frames: list, folder: Path) -> VideoReport:
        """Move the frames' files from the staging `folder` into place and insert the sequence, its frames and
        their instances, in one transaction (the moved files are removed again if it fails)."""
        ws = self.ws
        encoded = [ws.encode_predictions(predictions, info.height, info.width) for *_, predictions, _ in frames]
        stamp, moved = now(), []
        try:
            with ws.db.write() as conn:
                for relative, preview, *_ in frames:
                    for target in (relative, preview) if preview else (relative,):
                        moved.append(target)
                        ws.stage.move_in(folder / Path(target).name, target)
                fsync_dir(ws.images_dir)
                fsync_dir(ws.previews_dir)
                sequence_id, first, count = self._insert_rows(conn, name, sha, info, frames, encoded, stamp)
        except BaseException:
            with contextlib.suppress(AppError):
                ws.discard(moved)
            raise
        n_tracks = len({t for *_, tracks in frames for t in tracks.values()})
        return VideoReport(sequence_id, first, len(frames), count, n_tracks)

    def _insert_rows(self, conn, name: str, sha: str, info, frames: list, encoded: list,
                     stamp: str) -> tuple[int, int, int]:
        """The sequence, frame and instance rows; returns (sequence id, first frame's image id, instances)."""
        session, height, width, count = self.session, info.height, info.width, 0
        sequence_id = video_store.insert_sequence(conn, name, sha, info.fps, len(frames), width, height, "condinst",
                                                  stamp)
        first = None
        for index, ((relative, _, frame_name, digest, _, tracks), (items, encs)) in enumerate(zip(frames, encoded)):
            image_id = storage.add_image_row(conn, relative, digest, frame_name, height, width, session.key,
                                             sequence_id=sequence_id, frame_index=index, stamp=stamp)
            first = image_id if first is None else first
            for row, (item, enc) in enumerate(zip(items, encs)):
                if row not in tracks:  # a duplicate or low-score detection the tracker left out
                    continue
                storage.insert_instance(conn, image_id, item.category_id, enc, "model", item.score, item.meta,
                                        track_id=tracks[row])
                count += 1
        return sequence_id, first, count


def _reason(exc: Exception, path: Path) -> str:
    """The reader's one line without the temporary upload path it starts with."""
    text = str(exc)
    return text[len(str(path)):].lstrip(": ") if text.startswith(str(path)) else text


def representatives(images: list[ImageRecord], current: int | None = None) -> list[ImageRecord]:
    """The image list with each sequence as ONE entry: its frame `current` when that is one of its frames,
    else its first frame (images come in id order, so a sequence sits where its first frame does)."""
    chosen: dict[int, ImageRecord] = {}
    out: list[ImageRecord] = []
    for image in images:
        if image.sequence_id is None:
            out.append(image)
        elif image.sequence_id not in chosen or image.id == current:
            if image.sequence_id not in chosen:
                out.append(image)
            else:
                out[out.index(chosen[image.sequence_id])] = image
            chosen[image.sequence_id] = image
    return out
