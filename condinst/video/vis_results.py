"""Tracks -> YouTube-VIS results: one entry per track, with one compressed RLE or null per frame.

    tracks = VideoTracks()
    for frame in frames:
        tracks.add(frame.index, frame.result, tracker.update(frame))
    entries = tracks.results(video_id, category_ids, num_frames)

    {"video_id": 3, "category_id": 2, "score": 0.81, "segmentations": [null, {"size": [H, W], "counts": "..."}, ...]}

A track's category is the class with the largest summed score over its frames, its score the mean
of its detections' scores (as MaskTrack R-CNN and CrossVIS report). Only RLEs are kept in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..postprocess import ImageResult


@dataclass
class TrackRecord:
    masks: dict[int, dict] = field(default_factory=dict)  # frame index -> RLE
    scores: list[float] = field(default_factory=list)
    class_scores: dict[int, float] = field(default_factory=dict)

    @property
    def class_index(self) -> int:
        return max(self.class_scores, key=self.class_scores.get)


class VideoTracks:
    """The tracks of one video as they are found, frame by frame."""

    def __init__(self):
        self.tracks: dict[int, TrackRecord] = {}
        self.num_frames = 0

    def add(self, frame_index: int, result: ImageResult, assignments: list[tuple[int, int]]) -> None:
        """`assignments` [(track id, row of `result`)] of frame `frame_index`; empty masks count as absent."""
        self.num_frames = max(self.num_frames, frame_index + 1)
        scores, classes = result.scores.tolist(), result.classes.tolist()
        for track_id, k in assignments:
            if result.instance_masks.crops[k].numel() == 0:
                continue
            record = self.tracks.setdefault(track_id, TrackRecord())
            record.masks[frame_index] = result.instance_masks.rle(k)
            record.scores.append(float(scores[k]))
            c = int(classes[k])
            record.class_scores[c] = record.class_scores.get(c, 0.0) + float(scores[k])

    def results(self, video_id: int, category_ids, num_frames: int | None = None) -> list[dict]:
        """YouTube-VIS result entries of the video (`category_ids[class index]` -> dataset id)."""
        n = self.num_frames if num_frames is None else num_frames
        out = []
        for track_id in sorted(self.tracks):
            record = self.tracks[track_id]
            out.append({"video_id": int(video_id), "category_id": int(category_ids[record.class_index]),
                        "score": round(sum(record.scores) / len(record.scores), 6),
                        "segmentations": [record.masks.get(t) for t in range(n)], "track_id": int(track_id)})
        return out
