"""Mask propagation quality: a person's mask on frame 0 carried k = 1..10 frames, mean IoU with the truth.

The generated test videos (tests/videokit.py: cut-outs crossing over a background, two dates crossing
on one line, a camera panning and zooming over a photo) have ground-truth masks by construction.
For every object visible on frame 0, its true mask (and the same mask eroded / dilated by
`--wrong-px` pixels, a slightly wrong correction) is propagated with the bundled model
(`condinst.video.propagate.propagate`) and compared per horizon k with the truth, beside two baselines:

    propagate  the instance's filters from frame 0 re-centred where it went (frames after a stop count as empty)
    copy       the frame-0 mask unchanged
    tracker    the detection that CondInstTracker links to the frame-0 instance (the track whose frame-0
               detection mask overlaps the given mask most), empty on frames where the track has none

IoU is averaged over the (object, k) pairs where the object is still visible at k. Every object of
these videos moves (the camera pans); how many move at least `--moving-px` pixels is printed.

    CONDINST_SHARED=/work/shared python -m bench.propagate
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/propagate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from bench.common import (REPO, add_common_args, environment, format_table, parse_list, settings_of, setup,
                          write_json)
from condinst.predictor import Predictor
from condinst.video.propagate import propagate
from condinst.video.reader import open_video
from condinst.video.segmenter import segment_frames
from condinst.video.tracker import CondInstTracker, TrackerConfig

sys.path.insert(0, str(REPO / "tests"))
import videokit  # noqa: E402  (the generated videos with ground truth)

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
METHODS = ("propagate", "copy", "tracker")
VIDEOS = {"crossing": lambda root: videokit.crossing_video(root, frames=16),
          "camera": lambda root: videokit.camera_video(root, frames=12),
          "dates": lambda root: videokit.crossing_video(root, frames=16, video_id=3, name="dates", same_class=True)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "propagate", iters=1, warmup=0)
    p.set_defaults(threads=2, device="cpu")
    p.add_argument("--horizon", type=int, default=10, help="frames propagated (default 10)")
    p.add_argument("--wrong-px", type=int, default=4, help="erosion / dilation of the wrong inputs (default 4)")
    p.add_argument("--moving-px", type=float, default=40.0, help="centroid motion of a 'moving' object (default 40)")
    p.add_argument("--videos", type=parse_list, default=list(VIDEOS), help="crossing,camera,dates (default all)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    return p.parse_args(argv)


def make_videos(root: Path, names: list[str]) -> list[tuple[str, list[np.ndarray], list[list[np.ndarray]]]]:
    """(name, frames, per object the (H, W) bool true mask of every frame) of the chosen test videos."""
    out = []
    for name in names:
        if name not in VIDEOS:
            raise SystemExit(f"--videos: unknown video {name!r} ({', '.join(VIDEOS)})")
        _, anns = VIDEOS[name](root)
        frames = list(open_video(root / name).frames())
        h, w = frames[0].shape[:2]
        truth = [[np.zeros((h, w), bool) if s is None else mask_utils.decode(s).astype(bool)
                  for s in a["segmentations"]] for a in anns]
        out.append((name, frames, truth))
    return out


def inputs(mask: np.ndarray, px: int) -> dict[str, np.ndarray]:
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    m = mask.astype(np.uint8)
    return {"true": mask, "eroded": cv2.erode(m, disc).astype(bool), "dilated": cv2.dilate(m, disc).astype(bool)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def tracked(predictor: Predictor, frames: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
    """Per frame {track id: (H, W) mask} of CondInstTracker (the `video` command's settings)."""
    tracker = CondInstTracker(predictor.model, TrackerConfig(min_score=0.1, new_track_score=0.5))
    out = []
    for frame in segment_frames(predictor, frames, batch_size=4):
        masks = frame.result.instance_masks
        out.append({tid: masks.mask(k).numpy() for tid, k in tracker.update(frame)})
    return out


def tracker_masks(tracks: list[dict[int, np.ndarray]], given: np.ndarray, horizon: int) -> list[np.ndarray]:
    first = tracks[0]
    empty = np.zeros_like(given)
    if not first:
        return [empty] * horizon
    tid = max(first, key=lambda t: iou(first[t], given))
    return [tracks[k].get(tid, empty) for k in range(1, horizon + 1)]


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def evaluate(predictor: Predictor, videos, args) -> tuple[list[dict], float]:
    """One record per (video, object, input, method, k) with the IoU, and propagation ms/frame."""
    records, seconds, frames_done = [], 0.0, 0
    for name, frames, truth in videos:
        tracks = tracked(predictor, frames[: args.horizon + 1])
        for obj, masks in enumerate(truth):
            if not masks[0].any():
                continue
            last = max(k for k in range(min(args.horizon, len(frames) - 1) + 1) if masks[k].any())
            moving = bool(np.linalg.norm(centroid(masks[last]) - centroid(masks[0])) >= args.moving_px)
            for kind, given in inputs(masks[0], args.wrong_px).items():
                t0 = time.perf_counter()
                out = propagate(predictor, frames[0], given, frames[1:], args.horizon)
                seconds += time.perf_counter() - t0
                frames_done += max(len(out.frames), 1)
                empty = np.zeros_like(given)
                ours = [p.mask for p in out.frames] + [empty] * (args.horizon - len(out.frames))
                preds = {"propagate": ours, "copy": [given] * args.horizon,
                         "tracker": tracker_masks(tracks, given, args.horizon)}
                for k in range(1, min(args.horizon, len(frames) - 1) + 1):
                    visible = bool(masks[k].any())
                    for method, pred in preds.items():
                        records.append({"video": name, "object": obj, "input": kind, "method": method, "k": k,
                                        "visible": visible, "moving": moving,
                                        "iou": iou(pred[k - 1], masks[k]) if visible else None,
                                        "predicted_empty": not pred[k - 1].any()})
                records.append({"video": name, "object": obj, "input": kind, "method": "propagate", "k": 0,
                                "moving": moving, "fit_iou": out.filters.iou, "returned": len(out.frames),
                                "stopped": out.stopped, "last_visible": last,
                                "iou": [iou(p.mask, masks[p.offset]) for p in out.frames],
                                "confidence": [p.confidence for p in out.frames]})
    return records, 1000 * seconds / max(frames_done, 1)


def table_rows(records: list[dict], horizon: int) -> list[dict]:
    rows = []
    for kind in ("true", "eroded", "dilated"):
        for method in METHODS:
            row = {"input": kind, "method": method}
            for k in range(1, horizon + 1):
                vals = [r["iou"] for r in records if r["k"] == k and r["input"] == kind and r["method"] == method
                        and r["visible"]]
                row[f"k{k}"] = float(np.mean(vals)) if vals else None
                row[f"n{k}"] = len(vals)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    env = environment(device)
    predictor = Predictor.from_weights(args.weights, device=str(device))
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_videos(Path(tmp), args.videos)
        with torch.no_grad():
            records, ms = evaluate(predictor, videos, args)
    rows = table_rows(records, args.horizon)
    columns = [("input", "input", "{}"), ("method", "method", "{}")]
    columns += [(f"k={k}", f"k{k}", "{:.3f}") for k in range(1, args.horizon + 1)]
    runs = [r for r in records if r["k"] == 0]
    print(f"propagate: {len(runs)} runs ({len(runs) // 3} objects x 3 inputs) on {len(videos)} videos, "
          f"{env['device_name']}, {env['torch_threads']} threads; {ms:.0f} ms per propagated frame; "
          f"{sum(r['moving'] for r in runs) // 3} objects move >= {args.moving_px:g} px")
    print()
    print(format_table(rows, columns))
    print()
    for r in runs:
        if r["stopped"] or r["returned"] < min(args.horizon, r["last_visible"]):
            print(f"  {r['video']} object {r['object']} ({r['input']}): fit IoU {r['fit_iou']:.2f}, "
                  f"{r['returned']} frames, visible to frame {r['last_visible']}; {r['stopped']}; IoU "
                  + " ".join(f"{v:.2f}" for v in r["iou"]))
    payload = {"benchmark": "propagate", "environment": env, "settings": settings_of(args), "results": rows,
               "runs": runs, "ms_per_frame": ms}
    path = write_json(args.out, payload)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
