"""Video instance segmentation speed: frames per second, and the tracking overhead per frame apart.

A camera pans over a photo (assets/samples/fruits_nuts_7.jpg, or random pixels with --random-frames);
each model segments the frames in batches (`condinst.video.segmenter.segment_frames`, the path of
`python -m condinst video`), then each tracker links the same per-frame results:

    default    the bundled model (assets/default_model/model.pth), its own test size (352 short side)
    r50        R-50-FPN CondInst (MS_R_50_1x, random weights) at the YouTube-VIS test size (360 short
               side, 640 max), `--detections` forced per frame (score threshold 0)
    condinst   CondInstTracker: the tracks' filters re-applied to each frame's mask features
    bytetrack  ByteTrack (Roboflow's trackers) on the boxes

Reported per model: model ms/frame (resize, network, postprocess with masks at the frame size),
frames/s of model + tracker, and each tracker's ms/frame and its share of the model time (goal: <= 5%).
Model and trackers run interleaved, batch by batch, so that other load on the machine slows both alike.

    python -m bench.video                                  # CPU, 2 threads, 24 frames of 360x480
    python -m bench.video --device cuda --frames 48 --batch-size 8
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/video.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from bench.common import (REPO, add_common_args, environment, format_table, parse_list, parse_size, settings_of,
                          setup, synchronize, write_json)
from bench.models import build_condinst, condinst_config, force_detections
from condinst.predictor import Predictor
from condinst.video.pipeline import make_tracker
from condinst.video.segmenter import segment_frames
from condinst.video.tracker import TrackerConfig

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
PHOTO = REPO / "assets" / "samples" / "fruits_nuts_7.jpg"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "video", iters=1, warmup=1)
    p.set_defaults(threads=2, device="cpu")
    p.add_argument("--models", type=parse_list, default=["default", "r50"], help="default,r50")
    p.add_argument("--trackers", type=parse_list, default=["condinst", "bytetrack"], help="condinst,bytetrack")
    p.add_argument("--frames", type=int, default=24, help="frames per video (default 24)")
    p.add_argument("--frame-size", type=parse_size, default=(360, 480), help="HEIGHTxWIDTH (default 360x480)")
    p.add_argument("--batch-size", type=int, default=4, help="frames per model call (default 4)")
    p.add_argument("--detections", type=int, default=20, help="detections per frame forced on r50 (default 20)")
    p.add_argument("--r50-min-size", type=int, default=360, help="r50 test shortest edge (default 360)")
    p.add_argument("--r50-max-size", type=int, default=640, help="r50 test longest edge (default 640)")
    p.add_argument("--tiny", action="store_true", help="narrow r50 (smoke tests)")
    p.add_argument("--default-weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--random-frames", action="store_true", help="random pixels instead of the photo")
    return p.parse_args(argv)


def camera_frames(count: int, size: tuple[int, int], random_pixels: bool, seed: int) -> list[np.ndarray]:
    """`count` (H, W, 3) frames of a window panning left to right over the photo."""
    h, w = size
    if random_pixels or not PHOTO.is_file():
        photo = np.random.default_rng(seed).integers(0, 255, (2 * h, 2 * w, 3), dtype=np.uint8)
    else:
        photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    ph, pw = photo.shape[:2]
    cw, ch = min(pw, int(ph * w / h * 0.8)), min(ph, int(ph * 0.8))
    frames = []
    for t in range(count):
        x0 = int((pw - cw) * t / max(count - 1, 1))
        box = (x0, (ph - ch) // 2, x0 + cw, (ph - ch) // 2 + ch)
        frames.append(np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR, box=box)))
    return frames


def predictors(args, device: torch.device) -> list[tuple[str, Predictor, TrackerConfig]]:
    """(name, predictor, tracker settings) of each requested model: the `video` command's defaults for
    the trained model; every forced detection tracked for the random-weight one (its scores are tiny)."""
    out = []
    for name in args.models:
        if name == "default":
            if not args.default_weights.is_file():
                print(f"  default model: skipped, {args.default_weights} not found", flush=True)
                continue
            out.append((name, Predictor.from_weights(args.default_weights, device=str(device)),
                        TrackerConfig(min_score=0.1, new_track_score=0.5)))
        elif name == "r50":
            cfg = force_detections(condinst_config("MS_R_50_1x", tiny=args.tiny), args.detections,
                                   min_size=args.r50_min_size, max_size=args.r50_max_size)
            torch.manual_seed(args.seed)
            out.append((name, Predictor(build_condinst(cfg, device).optimize_for_inference(), cfg, device),
                        TrackerConfig(min_score=0.0, new_track_score=0.0)))
        else:
            raise SystemExit(f"--models: unknown model {name!r} (default, r50)")
    return out


def measure(name: str, predictor: Predictor, config: TrackerConfig, frames: list[np.ndarray], args,
            device: torch.device) -> dict:
    """Model and trackers interleaved batch by batch (each tracker right after the batch it links), so
    that a busy machine slows both alike; the overhead is total tracking time / total model time."""
    list(segment_frames(predictor, frames[: args.batch_size], args.batch_size))  # warm-up
    trackers = {kind: make_tracker(kind, predictor, config) for kind in args.trackers}
    model_ms, times, tracks, detections = [], {k: [] for k in trackers}, {k: set() for k in trackers}, []
    synchronize(device)
    for frame in segment_frames(predictor, frames, args.batch_size, keep_features=True):
        synchronize(device)
        model_ms.append(1000 * frame.seconds)
        detections.append(int((frame.result.scores >= config.min_score).sum()))
        for kind, tracker in trackers.items():
            t0 = time.perf_counter()
            tracks[kind].update(t for t, _ in tracker.update(frame))
            synchronize(device)
            times[kind].append(1000 * (time.perf_counter() - t0))
    total = float(np.sum(model_ms))
    row = {"model": name, "frames": len(frames), "frame_size": list(frames[0].shape[:2]),
           "input_size": list(frame.input_size), "model_ms_per_frame": total / len(frames),
           "model_median_ms": float(np.median(model_ms)), "detections_per_frame": float(np.mean(detections))}
    for kind, ts in times.items():
        row[f"{kind}_ms_per_frame"] = float(np.mean(ts))
        row[f"{kind}_median_ms"] = float(np.median(ts))
        row[f"{kind}_overhead_pct"] = 100 * float(np.sum(ts)) / total
        row[f"{kind}_fps"] = 1000 * len(frames) / (total + float(np.sum(ts)))
        row[f"{kind}_tracks"] = len(tracks[kind])
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    env = environment(device)
    frames = camera_frames(args.frames, args.frame_size, args.random_frames, args.seed)
    print(f"video: {len(frames)} frames of {args.frame_size[1]}x{args.frame_size[0]} (WxH), batch {args.batch_size}, "
          f"{env['device_name']}, {env['torch_threads']} threads", flush=True)
    rows = [measure(name, p, config, frames, args, device) for name, p, config in predictors(args, device)]
    columns = [("model", "model", "{}"), ("input", "input_size", "{}"), ("dets/frame", "detections_per_frame", "{:.1f}"),
               ("model ms/frame", "model_ms_per_frame", "{:.1f}"), ("median", "model_median_ms", "{:.1f}")]
    for kind in args.trackers:
        columns += [(f"{kind} ms", f"{kind}_ms_per_frame", "{:.2f}"), ("median", f"{kind}_median_ms", "{:.2f}"),
                    (f"{kind} %", f"{kind}_overhead_pct", "{:.1f}"),
                    (f"{kind} fps", f"{kind}_fps", "{:.2f}")]
    print()
    print(format_table(rows, columns))
    payload = {"benchmark": "video", "environment": env, "settings": settings_of(args), "results": rows,
               "goal": "tracking <= 5% of the model time per frame"}
    path = write_json(args.out, payload)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
