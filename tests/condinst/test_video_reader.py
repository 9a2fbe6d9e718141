"""Reading videos and frame folders: formats, order, and one clear error for each kind of bad input."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from condinst.video.reader import VideoError, open_video

H, W = 48, 64


def frame(t: int) -> np.ndarray:
    """A bright bar at x = 4t (frames can be told apart after lossy coding)."""
    img = np.full((H, W, 3), 30, np.uint8)
    img[:, 4 * t : 4 * t + 8] = 220
    return img


def write_video(path, n: int, codec: str = "libx264", options=None, size=(H, W)) -> None:
    import av

    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=10)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for t in range(n):
            img = frame(t % 14) if size == (H, W) else np.zeros((*size, 3), np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("name,codec", [("a.mp4", "libx264"), ("a.webm", "libvpx"), ("a.avi", "mpeg4")])
def test_video_files_decode_every_frame_in_order(tmp_path, name, codec):
    write_video(tmp_path / name, 12, codec)
    video = open_video(tmp_path / name)
    assert (video.info.height, video.info.width, video.info.num_frames) == (H, W, 12)
    assert video.info.fps == pytest.approx(10.0)
    frames = list(video.frames())
    assert len(frames) == 12 and frames[0].shape == (H, W, 3) and frames[0].dtype == np.uint8
    for t, f in enumerate(frames):  # the bar is where frame t drew it
        assert f[H // 2, 4 * t + 4].mean() > 150 and f[H // 2, (4 * t + 30) % W].mean() < 100


def test_frame_folder_in_natural_order(tmp_path):
    for t in range(12):
        Image.fromarray(frame(t)).save(tmp_path / f"frame_{t}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    video = open_video(tmp_path)
    assert [p.name for p in video.info.frame_files][:3] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    assert [p.name for p in video.info.frame_files][-1] == "frame_11.png"  # not after frame_1
    frames = list(video.frames())
    assert len(frames) == 12 and all(np.array_equal(f, frame(t)) for t, f in enumerate(frames))


def test_truncated_files_are_reported(tmp_path):
    # moov atom in front: the frames before the cut decode, then the shortfall is reported
    write_video(tmp_path / "full.mp4", 12, options={"movflags": "faststart"})
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VideoError, match=r"cut.mp4: .*truncated"):
        list(open_video(tmp_path / "cut.mp4").frames())
    # moov atom at the end (the default): the cut file cannot even be opened
    write_video(tmp_path / "end.mp4", 12)
    data = (tmp_path / "end.mp4").read_bytes()
    (tmp_path / "cut2.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut2.mp4: not a readable video"):
        open_video(tmp_path / "cut2.mp4")
    # webm stores no frame count; its duration tells that frames are missing
    rng = np.random.default_rng(0)
    import av

    with av.open(str(tmp_path / "noise.webm"), "w") as c:
        s = c.add_stream("libvpx", rate=10)
        s.height, s.width, s.pix_fmt = H, W, "yuv420p"
        for _ in range(12):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = (tmp_path / "noise.webm").read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VideoError, match=r"cut.webm: ends after \d+ of 12 frames \(from its duration\)"):
        list(open_video(tmp_path / "cut.webm").frames())


def test_bad_inputs_give_one_line_errors(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 50)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "empty_dir").mkdir()
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    Image.fromarray(frame(0)).save(sizes / "0.png")
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(sizes / "1.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(frame(0)).save(broken / "0.png")
    (broken / "1.png").write_bytes(b"\x89PNG garbage")
    cases = [(tmp_path / "junk.mp4", "junk.mp4: not a readable video"),
             (tmp_path / "empty.mp4", "empty.mp4: not a readable video"),
             (tmp_path / "empty_dir", "folder holds no frame images"),
             (sizes, "frame 1.png is 64x50 but 0.png is 64x48"),
             (broken, "frame 1.png is not a readable image"),
             (tmp_path / "missing.mp4", "no such file")]
    for path, needle in cases:
        with pytest.raises(VideoError) as e:
            list(open_video(path).frames())
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_frames_are_streamed_not_loaded_whole(tmp_path):
    """300 frames of 240x320 (69 MB decoded): reading them all keeps a few frames in memory, not the video."""
    write_video(tmp_path / "long.mp4", 300, size=(240, 320))
    video = open_video(tmp_path / "long.mp4")
    tracemalloc.start()
    count = 0
    for f in video.frames():
        count += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 300
    assert peak < 10 * 240 * 320 * 3, peak  # under 10 frames' worth at any time


def test_a_frame_whose_exif_turn_hides_after_the_pixels_is_one_error(tmp_path):
    """The header reader (`condinst.preprocess.shown_size`) does not read a PNG's eXIf chunk placed after the pixel
    data, `read_image` does and turns the frame: the frame's decoded size is checked against its header's."""
    import struct
    import zlib

    Image.fromarray(frame(0)).save(tmp_path / "frame_0.png")
    Image.fromarray(frame(1)).save(tmp_path / "frame_1.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn
    raw = exif.tobytes()[6:]  # without "Exif\0\0": a PNG eXIf chunk holds the TIFF block
    chunk = struct.pack(">I", len(raw)) + b"eXIf" + raw + struct.pack(">I", zlib.crc32(b"eXIf" + raw))
    data = (tmp_path / "frame_1.png").read_bytes()
    end = data.rindex(b"IEND") - 4
    (tmp_path / "frame_1.png").write_bytes(data[:end] + chunk + data[end:])
    video = open_video(tmp_path)
    assert (video.info.height, video.info.width) == (H, W)
    with pytest.raises(VideoError, match=f"frame_1.png decodes to {H}x{W}, not the {W}x{H} its header says"):
        list(video.frames())
