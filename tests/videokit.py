"""Test videos made from the fruits_nuts photos, with ground-truth tracks by construction.

    crossing_video(out_dir)  cut-out objects (their COCO masks) moving over a plain background; two of
                             them cross, the later-drawn one occluding the other
    camera_video(out_dir)    a camera panning and zooming over one photo (the photo's masks follow)

Each writes the frames as JPEGs (`<name>/00000.jpg`, ...), optionally an mp4, and returns the
YouTube-VIS video and annotation entries; `write_ytvis` puts videos together in one dataset JSON.
Ground truth: an object's visible pixels in each frame (what is in view and not covered), null
where nothing of it is visible.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from testutils import DATASETS

FRUITS = DATASETS / "fruits_nuts" / "data"
CATEGORIES = [{"id": 1, "name": "date"}, {"id": 2, "name": "fig"}, {"id": 3, "name": "hazelnut"}]


def _photo(file_name: str) -> tuple[np.ndarray, list[dict]]:
    data = json.loads((FRUITS / "trainval.json").read_text())
    image = next(im for im in data["images"] if im["file_name"] == file_name)
    anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    photo = np.asarray(Image.open(FRUITS / "images" / file_name).convert("RGB"))
    h, w = photo.shape[:2]
    for a in anns:
        a["mask"] = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))).astype(bool)
    return photo, anns


def _rle(mask: np.ndarray) -> dict | None:
    if not mask.any():
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _write(frames: list[np.ndarray], masks: list[list[np.ndarray]], categories: list[int], out_dir: Path,
           name: str, video_id: int, mp4: bool) -> tuple[dict, list[dict]]:
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    file_names = []
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)
        file_names.append(f"{name}/{t:05d}.jpg")
    if mp4:
        write_mp4(frames, out_dir / f"{name}.mp4")
    h, w = frames[0].shape[:2]
    video = {"id": video_id, "file_names": file_names, "height": h, "width": w, "length": len(frames)}
    anns = []
    for k, c in enumerate(categories):
        segs = [_rle(masks[t][k]) for t in range(len(frames))]
        if not any(segs):
            continue
        anns.append({"video_id": video_id, "category_id": c, "iscrowd": 0, "segmentations": segs,
                     "areas": [None if s is None else int(mask_utils.area(s)) for s in segs],
                     "bboxes": [None if s is None else mask_utils.toBbox(s).tolist() for s in segs]})
    return video, anns


def write_mp4(frames: list[np.ndarray], path: Path, fps: int = 10) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def crossing_video(out_dir: Path, frames: int = 16, video_id: int = 1, size: tuple[int, int] = (360, 480),
                   mp4: bool = False, name: str = "crossing", same_class: bool = False) -> tuple[dict, list[dict]]:
    """Three cut-outs of 7.jpg at 0.6 scale: a date and a fig cross horizontally (the fig in front),
    a hazelnut moves down on the right. `same_class`: two dates cross on one line instead (the second
    one in front, hiding the first completely for a few frames), the hazelnut as before."""
    photo, anns = _photo("7.jpg")
    rng = np.random.default_rng(0)
    h, w = size
    background = np.median(photo[:40, :40].reshape(-1, 3), axis=0)
    base = np.clip(background + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    chosen = [next(a for a in anns if a["category_id"] == c) for c in (1, 2, 3)]
    if same_class:
        dates = sorted((a for a in anns if a["category_id"] == 1), key=lambda a: a["area"])
        chosen = [dates[0], dates[-1], chosen[2]]  # the smaller date passes behind the larger one
    cutouts = []
    for a in chosen:
        x, y, bw, bh = (int(round(v)) for v in a["bbox"])
        crop = Image.fromarray(photo[y : y + bh, x : x + bw])
        m = Image.fromarray(a["mask"][y : y + bh, x : x + bw].astype(np.uint8) * 255)
        size_s = (max(1, int(bw * 0.6)), max(1, int(bh * 0.6)))
        cutouts.append((np.asarray(crop.resize(size_s, Image.BILINEAR)), np.asarray(m.resize(size_s, Image.NEAREST)) > 127))
    # (start x, start y) -> (end x, end y) of each cut-out's top-left corner; drawing order = list order.
    paths = [((20, 110), (300, 130)), ((300, 130), (20, 110)), ((370, 10), (370, 230))]
    if same_class:
        paths = [((20, 120), (300, 120)), ((280, 110), (0, 110)), ((370, 10), (370, 230))]
    out_frames, out_masks = [], []
    for t in range(frames):
        f = t / max(frames - 1, 1)
        frame, visible = base.copy(), []
        for (img, m), ((x0, y0), (x1, y1)) in zip(cutouts, paths):
            x, y = int(round(x0 + f * (x1 - x0))), int(round(y0 + f * (y1 - y0)))
            full = np.zeros((h, w), bool)
            mh, mw = min(m.shape[0], h - y), min(m.shape[1], w - x)
            full[y : y + mh, x : x + mw] = m[:mh, :mw]
            frame[full] = img[:mh, :mw][m[:mh, :mw]]
            visible = [v & ~full for v in visible] + [full]
        out_frames.append(frame)
        out_masks.append(visible)
    return _write(out_frames, out_masks, [a["category_id"] for a in chosen], out_dir, name, video_id, mp4)


def camera_video(out_dir: Path, frames: int = 12, video_id: int = 2, size: tuple[int, int] = (360, 480),
                 mp4: bool = False, name: str = "camera") -> tuple[dict, list[dict]]:
    """A camera window over 15.jpg panning left to right while zooming in (scale 1.0 -> 1.3)."""
    photo, anns = _photo("15.jpg")
    ph, pw = photo.shape[:2]
    h, w = size
    out_frames, out_masks = [], []
    for t in range(frames):
        f = t / max(frames - 1, 1)
        zoom = 1.0 + 0.3 * f
        ch, cw = int(h / zoom * 1.4), int(w / zoom * 1.4)  # window on the photo, shown at (h, w)
        x0 = int(f * (pw - cw))
        y0 = (ph - ch) // 2
        window = (x0, y0, x0 + cw, y0 + ch)
        out_frames.append(np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR, box=window)))
        out_masks.append([np.asarray(Image.fromarray(a["mask"].astype(np.uint8) * 255).resize(
            (w, h), Image.NEAREST, box=window)) > 127 for a in anns])
    return _write(out_frames, out_masks, [a["category_id"] for a in anns], out_dir, name, video_id, mp4)


def write_ytvis(path: Path, videos: list[tuple[dict, list[dict]]]) -> Path:
    """One YouTube-VIS dataset JSON of `videos` (annotation ids numbered here)."""
    anns = [a for _, video_anns in videos for a in video_anns]
    for i, a in enumerate(anns, 1):
        a["id"] = i
    data = {"info": {"description": "generated from fruits_nuts (tests/videokit.py)"}, "categories": CATEGORIES,
            "videos": [v for v, _ in videos], "annotations": anns}
    path.write_text(json.dumps(data))
    return path


def gt_results(path: Path) -> list[dict]:
    """Results entries equal to the ground truth (score 1): what a perfect tracker would write."""
    data = json.loads(Path(path).read_text())
    return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0,
             "segmentations": a["segmentations"]} for a in data["annotations"]]


if __name__ == "__main__":  # python tests/videokit.py OUT_DIR: both videos (frames + mp4) and OUT_DIR/ytvis.json
    import sys

    out = Path(sys.argv[1])
    videos = [crossing_video(out, frames=16, mp4=True), camera_video(out, frames=12, mp4=True),
              crossing_video(out, frames=16, video_id=3, mp4=True, name="dates", same_class=True)]
    print(f"wrote {write_ytvis(out / 'ytvis.json', videos)}")
