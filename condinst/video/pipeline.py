"""One video end to end: frames -> batched CondInst -> tracker -> YouTube-VIS tracks (+ drawn video).

    out = track_video(predictor, open_video("clip.mp4"), "condinst", TrackerConfig(), batch_size=4,
                      spool=Path("clip.sqlite"))          # masks wait on disk (default: in memory)
    out.tracks.results(video_id=1, category_ids=[1, 2, 3])
    out.tracks.close()

Time is measured apart: `model_s` (preprocessing, network, postprocessing), `tracking_s` (the tracker's
update) and `wall_s` (everything, decoding and drawing included).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..predictor import Predictor
from .segmenter import segment_frames
from .tracker import CondInstTracker, TrackerConfig
from .vis_results import VideoTracks


@dataclass
class TrackedVideo:
    tracks: VideoTracks
    num_frames: int
    model_s: float
    tracking_s: float
    wall_s: float

    @property
    def frames(self) -> int:
        return self.num_frames


def make_tracker(kind: str, predictor: Predictor, config: TrackerConfig):
    """'condinst' (the model's own appearance, CondInst or SipMask; needs the PyTorch model) or 'bytetrack'."""
    if kind == "condinst":
        if not predictor.is_torch:
            raise ValueError("the condinst tracker needs the PyTorch model (.pth): an ONNX graph has no mask features")
        return CondInstTracker(predictor.model, config)
    if kind == "bytetrack":
        from .bytetrack import ByteTrackBaseline

        return ByteTrackBaseline(config)
    raise ValueError(f"unknown tracker {kind!r} (condinst or bytetrack)")


def track_video(predictor: Predictor, source, tracker: str = "condinst", config: TrackerConfig | None = None,
                batch_size: int = 4, vis_path: Path | None = None, progress: bool = False,
                spool: Path | None = None) -> TrackedVideo:
    """Segment and track every frame of `source` (reader.VideoFile / FrameSequence). `spool`: the
    SQLite file the masks go to frame by frame (vis_results.VideoTracks); the caller closes
    `out.tracks` once its results are read, and on an error the spool is already gone."""
    config = config or TrackerConfig()
    linker = make_tracker(tracker, predictor, config)
    tracks = VideoTracks(spool)
    writer = bar = None
    if vis_path is not None:
        from .render import VideoWriter

        writer = VideoWriter(vis_path, source.info.fps)
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.info.num_frames, desc=source.info.name, unit="frame", dynamic_ncols=True)
    names = [predictor.class_name(i) for i in range(predictor.cfg.fcos.num_classes)]
    model_s = tracking_s = 0.0
    n = 0
    start = time.perf_counter()
    try:
        for frame in segment_frames(predictor, source.frames(), batch_size, keep_features=tracker == "condinst"):
            model_s += frame.seconds
            t0 = time.perf_counter()
            assignments = linker.update(frame)
            tracking_s += time.perf_counter() - t0
            tracks.add(frame.index, frame.result, assignments)
            if writer is not None:
                from .render import draw_tracks

                writer.write(draw_tracks(frame.image, frame.result, assignments, names))
            n += 1
            if bar is not None:
                bar.update(1)
    except BaseException:
        tracks.close()
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    if writer is not None:
        writer.close()
    return TrackedVideo(tracks, n, model_s, tracking_s, time.perf_counter() - start)
