"""Videos and frame folders, read one frame at a time (memory bounded whatever the length).

    source = open_video("clip.mp4")         # or a folder of frame images, or open_frames([files])
    source.info                             # VideoInfo: size, frame count (when known), fps
    for frame in source.frames():           # (H, W, 3) uint8 RGB, in order
        ...

Video files (mp4, avi, webm, mkv, mov, ...) are decoded with PyAV; frame folders hold image files
ordered by natural sort (frame_2 before frame_10). Every expected failure is a `VideoError` with
one line naming the file: not a video, no video stream, unreadable or truncated data, zero frames,
a frame whose size differs from the first. Folders are checked (headers only) when opened, files
as they are decoded: a truncated file fails at the frame where its data ends.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError
from ..preprocess import IMAGE_SUFFIXES

VIDEO_SUFFIXES = {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif"}


class VideoError(UserError, ValueError):
    """A video or frame folder that cannot be read (and why), naming the file."""


@dataclass
class VideoInfo:
    """What is known of a video before decoding it: size (height, width), frame count (None when
    the container does not say), frames per second, and the frame files of a folder."""

    path: Path
    height: int
    width: int
    num_frames: int | None
    fps: float
    frame_files: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def natural_key(path: Path) -> list:
    """Sort key splitting digits from the rest: frame_2.jpg < frame_10.jpg."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_video(path: str | os.PathLike, fps: float = 30.0) -> "VideoFile | FrameSequence":
    """A video file, or a folder of frame images (played at `fps`)."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        if not files:
            raise VideoError(f"{path}: folder holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return FrameSequence(path, files, fps)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    return VideoFile(path)


def open_frames(path: str | os.PathLike, files: list[Path], fps: float = 30.0) -> "FrameSequence":
    """Frames given as a list of image files (a YouTube-VIS video's `file_names`), named `path`."""
    if not files:
        raise VideoError(f"{path}: zero frames")
    return FrameSequence(Path(path), [Path(f) for f in files], fps)


class FrameSequence:
    """Frame images read one at a time; every header is checked when opened (existence, size)."""

    def __init__(self, path: Path, files: list[Path], fps: float):
        from PIL import Image, UnidentifiedImageError

        from ..preprocess import shown_size

        size = None
        for f in files:
            try:
                with Image.open(f) as im:
                    w, h = shown_size(im)  # as read_image returns the frame (EXIF-oriented)
            except FileNotFoundError:
                raise VideoError(f"{path}: frame {f.name}: no such file") from None
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise VideoError(f"{path}: frame {f.name} is not a readable image ({e})") from None
            if size is None:
                size, first = (h, w), f.name
            elif (h, w) != size:
                raise VideoError(f"{path}: frame {f.name} is {w}x{h} but {first} is {size[1]}x{size[0]} "
                                 "(every frame of a video must have one size)")
        self.info = VideoInfo(path, size[0], size[1], len(files), fps, list(files))

    def frames(self) -> Iterator[np.ndarray]:
        from ..preprocess import ImageError, read_image

        for f in self.info.frame_files:
            try:
                image = read_image(f)
            except ImageError as e:
                raise VideoError(f"{self.info.path}: frame {f.name}: {e}") from None
            if image.shape[:2] != (self.info.height, self.info.width):  # an EXIF block the header did not show
                raise VideoError(f"{self.info.path}: frame {f.name} decodes to {image.shape[1]}x{image.shape[0]}, not "
                                 f"the {self.info.width}x{self.info.height} its header says")
            yield image


class VideoFile:
    """A video file decoded by PyAV, frame by frame (the first video stream)."""

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{path}: the file has no video stream")
                stream = container.streams.video[0]
                ctx = stream.codec_context
                height, width = int(ctx.height or 0), int(ctx.width or 0)
                rate = stream.average_rate or stream.guessed_rate
                fps = float(rate) if rate else 30.0
                frames = int(stream.frames or 0) or None
                exact = frames is not None
                if frames is None and container.duration:  # e.g. webm: only the duration is stored
                    frames = round(container.duration / 1e6 * fps)
        except av.FFmpegError as e:
            raise VideoError(f"{path}: not a readable video ({_reason(e)})") from None
        if height <= 0 or width <= 0:
            raise VideoError(f"{path}: the video stream has no frame size (corrupt header?)")
        self.info = VideoInfo(path, height, width, frames, fps)
        self.exact_count = exact  # the container states the frame count (else it is duration x fps)

    def frames(self) -> Iterator[np.ndarray]:
        import av

        path, info, count = self.path, self.info, 0
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    image = frame.to_ndarray(format="rgb24")
                    if image.shape[:2] != (info.height, info.width):
                        raise VideoError(f"{path}: frame {count + 1} is {image.shape[1]}x{image.shape[0]} but the "
                                         f"video is {info.width}x{info.height} (frame size changes mid-stream)")
                    count += 1
                    yield image
        except av.FFmpegError as e:
            raise VideoError(f"{path}: cannot decode past frame {count} ({_reason(e)}): the file is truncated or "
                             "corrupt") from None
        if count == 0:
            raise VideoError(f"{path}: zero frames decoded (empty or truncated video)")
        expected = info.num_frames
        if expected is not None and count < (expected if self.exact_count else expected - max(2, 0.02 * expected)):
            said = "" if self.exact_count else " (from its duration)"
            raise VideoError(f"{path}: ends after {count} of {expected} frames{said}: the file is truncated")


def _reason(e: Exception) -> str:
    return " ".join(str(getattr(e, "strerror", None) or e).split())
