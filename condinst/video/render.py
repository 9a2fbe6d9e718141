"""Drawing tracks on frames (supervision, colours by track id) and writing them as a video (PyAV)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import supervision as sv
import torch

from ..io import atomic_open
from ..postprocess import ImageResult
from ..visualize import draw


def draw_tracks(image: np.ndarray, result: ImageResult, assignments: list[tuple[int, int]], class_names) -> np.ndarray:
    """(H, W, 3) RGB frame with the tracked instances' masks, boxes and "#id class score" labels."""
    if not assignments:
        return image
    ids = np.array([t for t, _ in assignments], dtype=int)
    rows = torch.tensor([k for _, k in assignments], dtype=torch.long)
    det = sv.Detections(xyxy=result.boxes[rows].float().cpu().numpy().reshape(-1, 4),
                        mask=result.dense_masks(rows).cpu().numpy(),
                        confidence=result.scores[rows].float().cpu().numpy(),
                        class_id=result.classes[rows].cpu().numpy().astype(int), tracker_id=ids)
    labels = [f"#{t} {class_names[c]} {s:.2f}" for t, c, s in zip(ids, det.class_id, det.confidence)]
    return draw(image, det, labels, color_lookup=sv.ColorLookup.TRACK)


class VideoWriter:
    """H.264 mp4 (or VP9 .webm) written frame by frame into a temporary file that `close()` renames
    to `path` (`abort()` removes it: no half video is left); odd sizes are padded by one pixel."""

    def __init__(self, path: str | Path, fps: float):
        self.path, self.fps = Path(path), fps
        self.container = self.stream = None
        self._file = contextlib.ExitStack()

    def write(self, frame: np.ndarray) -> None:
        import av
        from fractions import Fraction

        h, w = frame.shape[:2]
        if self.stream is None:
            webm = self.path.suffix.lower() == ".webm"
            f = self._file.enter_context(atomic_open(self.path, "wb"))
            self.container = av.open(f, "w", format="webm" if webm else "mp4")
            codec = "libvpx-vp9" if webm else "libx264"
            self.stream = self.container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001))
            self.stream.height, self.stream.width = h + h % 2, w + w % 2
            self.stream.pix_fmt = "yuv420p"
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None
        self._file.close()

    def abort(self) -> None:
        """Stop without a file (the temporary one is removed)."""
        if self.container is not None:
            self.container.close()
            self.container = None
        self._file.__exit__(RuntimeError, RuntimeError("aborted"), None)
