"""Tracks -> YouTube-VIS results: one entry per track, with one compressed RLE or null per frame.

    tracks = VideoTracks(spool="clip.sqlite")     # None: an in-memory store (short videos, tests)
    for frame in frames:
        tracks.add(frame.index, frame.result, tracker.update(frame))
    for entry in tracks.iter_results(video_id, category_ids, num_frames): ...   # one track at a time
    tracks.close()                                 # the spool file goes

    {"video_id": 3, "category_id": 2, "score": 0.81, "segmentations": [null, {"size": [H, W], "counts": "..."}, ...]}

A track's category is the class with the largest summed score over its frames, its score the mean
of its detections' scores (as MaskTrack R-CNN and CrossVIS report). The RLEs go to a SQLite table
(track, frame) -> RLE as the frames come, so a long video's masks wait on disk, not in memory; only
each track's scores stay in memory, and the results are read back one track at a time.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..postprocess import ImageResult


@dataclass
class TrackRecord:
    scores: list[float] = field(default_factory=list)
    class_scores: dict[int, float] = field(default_factory=dict)

    @property
    def class_index(self) -> int:
        return max(self.class_scores, key=self.class_scores.get)


class VideoTracks:
    """The tracks of one video as they are found, frame by frame; `spool`: the SQLite file their
    masks are written to (created, and deleted by `close`); None keeps them in memory."""

    def __init__(self, spool: str | Path | None = None):
        self.spool = None if spool is None else Path(spool)
        self.tracks: dict[int, TrackRecord] = {}
        self.num_frames = 0
        self._db = sqlite3.connect(":memory:" if spool is None else str(spool))
        # a spool is scratch: a killed run redoes the video, so no journal and no fsync
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE masks (track INTEGER, frame INTEGER, rle TEXT, PRIMARY KEY (track, frame)) "
                         "WITHOUT ROWID")

    def add(self, frame_index: int, result: ImageResult, assignments: list[tuple[int, int]]) -> None:
        """`assignments` [(track id, row of `result`)] of frame `frame_index`; empty masks count as absent."""
        self.num_frames = max(self.num_frames, frame_index + 1)
        scores, classes = result.scores.tolist(), result.classes.tolist()
        rows = []
        for track_id, k in assignments:
            if result.instance_masks.crops[k].numel() == 0:
                continue
            record = self.tracks.setdefault(track_id, TrackRecord())
            rows.append((int(track_id), int(frame_index), json.dumps(result.instance_masks.rle(k))))
            record.scores.append(float(scores[k]))
            c = int(classes[k])
            record.class_scores[c] = record.class_scores.get(c, 0.0) + float(scores[k])
        if rows:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO masks VALUES (?, ?, ?)", rows)

    def iter_results(self, video_id: int, category_ids, num_frames: int | None = None) -> Iterator[dict]:
        """YouTube-VIS result entries of the video (`category_ids[class index]` -> dataset id), one
        track at a time in track id order (only that track's masks are read back)."""
        n = self.num_frames if num_frames is None else num_frames
        for track_id in sorted(self.tracks):
            record = self.tracks[track_id]
            segmentations: list[dict | None] = [None] * n
            for t, rle in self._db.execute("SELECT frame, rle FROM masks WHERE track = ? AND frame < ?",
                                           (track_id, n)):
                segmentations[t] = json.loads(rle)
            yield {"video_id": int(video_id), "category_id": int(category_ids[record.class_index]),
                   "score": round(sum(record.scores) / len(record.scores), 6),
                   "segmentations": segmentations, "track_id": int(track_id)}

    def results(self, video_id: int, category_ids, num_frames: int | None = None) -> list[dict]:
        """Every entry of `iter_results` in one list."""
        return list(self.iter_results(video_id, category_ids, num_frames))

    def close(self) -> None:
        """Close the store and delete the spool file."""
        self._db.close()
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)
