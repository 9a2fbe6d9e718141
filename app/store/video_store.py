"""A video's rows: its sequence, its frames' order and its tracks (schema v4, `app.store.db`).

Each function works inside the caller's transaction (``Workspace.db.read()`` / ``write()``), like
`app.store.storage`; a frame's image row is inserted by `storage.add_image_row` (the one image-row insert).

    SequenceRecord                        one sequence: name, fps, frame count, size, tracker
    sequence_of / sequences / find_sequence(conn, sha256) / insert_sequence      the sequences table
    frame_ids(conn, sequence_id)          image ids of its frames, in frame order
    live_track(conn, sequence_id, track)  (instance id, frame index, category id) of a track's live instances
    track_rows(conn, sequence_id)         (track id, frame index, category id) of every live tracked instance
    next_track(conn, sequence_id)         the sequence's largest track id + 1
    track_instance_on(conn, frame_id, track)   the live instance of a track on one frame, if any
"""
from __future__ import annotations

from dataclasses import dataclass

from app.errors import WorkspaceError
from app.store.records import check_id

SEQUENCE_COLUMNS = "id, name, fps, num_frames, width, height, tracker, created_at"


@dataclass(frozen=True)
class SequenceRecord:
    id: int
    name: str
    fps: float
    num_frames: int
    width: int
    height: int
    tracker: str | None
    created_at: str


def sequence_of(conn, sequence_id: int) -> SequenceRecord:
    row = conn.execute(f"SELECT {SEQUENCE_COLUMNS} FROM sequences WHERE id = ?",
                       (check_id(sequence_id, "Sequence id"),)).fetchone()
    if row is None:
        raise WorkspaceError(f"Sequence {sequence_id} does not exist")
    return SequenceRecord(*row)


def sequences(conn) -> list[SequenceRecord]:
    return [SequenceRecord(*row) for row in conn.execute(f"SELECT {SEQUENCE_COLUMNS} FROM sequences ORDER BY id")]


def find_sequence(conn, sha256: str) -> SequenceRecord | None:
    """The sequence of the video file with this content hash, if stored."""
    row = conn.execute(f"SELECT {SEQUENCE_COLUMNS} FROM sequences WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else SequenceRecord(*row)


def insert_sequence(conn, name: str, sha256: str, fps: float, num_frames: int, width: int, height: int,
                    tracker: str, stamp: str) -> int:
    """A new sequence row (its frames follow as image rows); returns its id."""
    return int(conn.execute("INSERT INTO sequences (name, sha256, fps, num_frames, width, height, tracker, created_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (name, sha256, float(fps), int(num_frames), int(width), int(height), tracker,
                             stamp)).lastrowid)


def frame_ids(conn, sequence_id: int) -> list[int]:
    """Image ids of the sequence's frames, in frame order."""
    return [row[0] for row in conn.execute("SELECT id FROM images WHERE sequence_id = ? ORDER BY frame_index",
                                           (check_id(sequence_id, "Sequence id"),))]


def live_track(conn, sequence_id: int, track_id: int) -> list[tuple[int, int, int]]:
    """(instance id, frame index, category id) of a track's live instances, in frame order."""
    return conn.execute("SELECT i.id, m.frame_index, i.category_id FROM instances i JOIN images m ON m.id = i.image_id"
                        " WHERE m.sequence_id = ? AND i.track_id = ? AND i.deleted = 0 ORDER BY m.frame_index, i.id",
                        (sequence_id, track_id)).fetchall()


def track_rows(conn, sequence_id: int) -> list[tuple[int, int, int]]:
    """(track id, frame index, category id) of every live instance on a track, by track then frame."""
    return conn.execute("SELECT i.track_id, m.frame_index, i.category_id FROM instances i JOIN images m"
                        " ON m.id = i.image_id WHERE m.sequence_id = ? AND i.track_id IS NOT NULL AND"
                        " i.deleted = 0 ORDER BY i.track_id, m.frame_index",
                        (check_id(sequence_id, "Sequence id"),)).fetchall()


def next_track(conn, sequence_id: int) -> int:
    """A new track id of the sequence: its largest + 1."""
    return int(conn.execute("SELECT COALESCE(MAX(i.track_id), 0) + 1 FROM instances i JOIN images m"
                            " ON m.id = i.image_id WHERE m.sequence_id = ?", (sequence_id,)).fetchone()[0])


def track_instance_on(conn, frame_id: int, track_id: int) -> int | None:
    """Id of the live instance of `track_id` on the frame (image) `frame_id`, None if the track is not there."""
    row = conn.execute("SELECT id FROM instances WHERE image_id = ? AND track_id = ? AND deleted = 0",
                       (frame_id, track_id)).fetchone()
    return None if row is None else int(row[0])
