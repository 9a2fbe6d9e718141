"""The box-tracker baseline: ByteTrack (Roboflow's `trackers`, the successor of `sv.ByteTrack`,
which supervision 0.31 no longer ships) on the same per-frame detections as `CondInstTracker`.

Same interface: `update(frame)` -> [(track id, detection row)]. ByteTrack links boxes with a
Kalman filter and box IoU (high-score detections first, then low-score ones); it never looks at
the masks or the filters, which is what the comparison shows.
"""
from __future__ import annotations

import numpy as np
import supervision as sv

from .segmenter import Frame
from .tracker import TrackerConfig


class ByteTrackBaseline:
    def __init__(self, config: TrackerConfig | None = None):
        from trackers import ByteTrackTracker

        self.config = config or TrackerConfig()
        # frame_rate 30 makes lost_track_buffer a number of frames; one detection confirms a track,
        # and the high-score stage starts where CondInstTracker starts tracks.
        self.tracker = ByteTrackTracker(lost_track_buffer=self.config.max_lost, frame_rate=30.0,
                                        track_activation_threshold=self.config.new_track_score,
                                        minimum_consecutive_frames=1,
                                        high_conf_det_threshold=self.config.new_track_score)

    def update(self, frame: Frame) -> list[tuple[int, int]]:
        result = frame.result
        scores = result.scores.detach().float().cpu().numpy()
        rows = np.flatnonzero(scores >= self.config.min_score)
        det = sv.Detections(xyxy=result.boxes.detach().float().cpu().numpy()[rows].reshape(-1, 4),
                            confidence=scores[rows], class_id=result.classes.cpu().numpy()[rows].astype(int),
                            data={"row": rows})
        tracked = self.tracker.update(det)
        if len(tracked) == 0:
            return []
        return [(int(t), int(r)) for t, r in zip(tracked.tracker_id, tracked.data["row"]) if t >= 0]
