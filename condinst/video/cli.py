"""`python -m condinst video` and `python -m condinst evaluate-video`.

    python -m condinst video --weights W --input clip.mp4 frames_dir/ --output results.json [--vis out.mp4]
    python -m condinst video ... --resume           # after a killed run: the videos it finished are kept
    python -m condinst video --weights W --input ytvis/JPEGImages/0043f083b5 --ann valid.json --output r.json
    python -m condinst evaluate-video --weights W --ann valid.json --videos ytvis/JPEGImages [--tracker bytetrack]
    python -m condinst evaluate-video --results r.json --ann valid.json          # score a results file only

Arguments, inputs (every video opened, every frame folder's headers read) and output paths are checked
before the model loads; expected failures are one `error: ...` line. A video that fails while being
decoded (truncated file) is reported and left out, the others are still written (exit code 1).

Each finished video's tracks go to `OUTPUT.parts/` (video/parts.py) and the running video's masks to
a spool there, so memory does not grow with the video's length; at the end the parts are streamed
into OUTPUT (atomically) and the folder goes. A killed run leaves the folder: `--resume` continues
with the videos it had not finished (a video cut off mid-way is redone from its first frame).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..validate import (check_device, edge_size, existing_dir, existing_file, positive_int, probability, writable_dir,
                        writable_file)
from .reader import VIDEO_SUFFIXES, VideoError, open_frames, open_video


class VideoCLIError(UserError):
    """A user mistake on the video command lines."""


def add_model_arguments(p: argparse.ArgumentParser, weights_required: bool = True) -> None:
    p.add_argument("--weights", required=weights_required, help="checkpoint (.pth; .onnx works with --tracker bytetrack)")
    p.add_argument("--config", help="preset name or AdelaiDet YAML; default: taken from the checkpoint")
    p.add_argument("--tracker", choices=("condinst", "bytetrack"), default="condinst",
                   help="condinst: the tracks' own filters (a SipMask model: coefficients at the moved box) re-applied "
                        "to each frame (default); bytetrack: box tracking baseline on the same detections")
    p.add_argument("--score-threshold", type=probability, default=0.1,
                   help="detections scoring less are not tracked (default 0.1)")
    p.add_argument("--new-track-score", type=probability, default=0.5,
                   help="an unmatched detection starts a track from this score (default 0.5)")
    p.add_argument("--max-lost", type=positive_int, default=10, help="frames a track survives unseen (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="frames per model call (default 4)")
    p.add_argument("--min-size", type=edge_size, help="test-time shortest edge (default: config)")
    p.add_argument("--max-size", type=edge_size, help="test-time longest edge cap (default: config)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--fast", action="store_true", help="fast mode (see predict --fast)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--input", nargs="+", required=True, help="video files (mp4, avi, webm, ...) or folders of frames")
    p.add_argument("--output", required=True, help="YouTube-VIS results JSON to write")
    p.add_argument("--ann", help="YouTube-VIS dataset JSON: video ids (and frame lists) come from it; an input is "
                                 "matched by its folder name or file stem")
    p.add_argument("--vis", help="write the tracks drawn: a video file (.mp4/.webm) for one input, else a folder "
                                 "with one <input name>.mp4 each")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of frame folders (default 30)")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run whose finished videos are in OUTPUT.parts (the same inputs and "
                        "settings); the results are those of an uninterrupted run")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, weights_required=False)
    p.add_argument("--ann", required=True, help="YouTube-VIS dataset JSON with the ground truth")
    p.add_argument("--videos", help="folder the dataset's frame file_names are relative to (with --weights)")
    p.add_argument("--results", help="score this results JSON instead of running a model")
    p.add_argument("--output", help="also write the results JSON here (with --weights)")
    p.add_argument("--track-score", type=probability, default=0.5,
                   help="tracks scoring at least this count for HOTA/ID switches (default 0.5)")
    p.add_argument("--metrics", help="write the metrics as JSON here")


@dataclass
class Job:
    """A video to process: its source (opened and checked) and its YouTube-VIS id and frame count."""

    source: object
    video_id: int
    length: int | None = None


# ---- checks (before the model) ------------------------------------------------------------------

def _check_model_args(args) -> None:
    existing_file(args.weights, "--weights")
    if args.weights.endswith(".onnx") and args.tracker == "condinst":
        raise VideoCLIError("--tracker condinst re-applies the dynamic filters and needs the PyTorch model (.pth); "
                            "use --tracker bytetrack with an .onnx file")
    if args.tracker == "bytetrack":
        require_trackers("--tracker bytetrack")
    check_device(args.device)


def require_trackers(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("trackers") is None:
        raise VideoCLIError(f"{what}: needs the `trackers` package (pip install --no-deps -r requirements-tracking.txt)")


def _jobs_from_inputs(inputs: list[str], ann: str | None, fps: float) -> tuple[list[Job], object]:
    dataset = None
    if ann:
        from .ytvis import load_dataset

        existing_file(ann, "--ann")
        dataset = load_dataset(ann)
    jobs, seen = [], set()
    for k, item in enumerate(inputs):
        path = Path(item)
        if not path.exists():
            raise VideoCLIError(f"--input {path}: no such file or folder")
        if path.is_file() and path.suffix.lower() not in VIDEO_SUFFIXES:
            raise VideoCLIError(f"--input {path}: not a video file ({', '.join(sorted(VIDEO_SUFFIXES))}) or a frame folder")
        if path.resolve() in seen:
            raise VideoCLIError(f"--input {path}: given twice")
        seen.add(path.resolve())
        if dataset is None:
            jobs.append(Job(open_video(path, fps), k + 1))
            continue
        name = path.name if path.is_dir() else path.stem
        video = next((v for v in dataset.videos if Path(v["file_names"][0]).parent.name == name), None)
        if video is None:
            raise VideoCLIError(f"--input {path}: no video of {ann} has its frames in a folder named {name!r}")
        source = (open_frames(path, [path / Path(f).name for f in video["file_names"]], fps) if path.is_dir()
                  else open_video(path))
        jobs.append(Job(source, video["id"], video["length"]))
    return jobs, dataset


def _vis_paths(vis: str | None, jobs: list[Job]) -> list[Path | None]:
    if not vis:
        return [None] * len(jobs)
    if Path(vis).suffix.lower() in (".mp4", ".webm"):
        if len(jobs) > 1:
            raise VideoCLIError(f"--vis {vis}: one video file for {len(jobs)} inputs; give a folder instead")
        writable_file(vis, "--vis")
        return [Path(vis)]
    writable_dir(vis, "--vis")
    names = [Path(j.source.info.path).stem for j in jobs]
    if len(set(names)) < len(names):
        raise VideoCLIError(f"--vis {vis}: two inputs share a name; write them one at a time")
    return [Path(vis) / f"{n}.mp4" for n in names]


# ---- running --------------------------------------------------------------------------------------

def _predictor(args):
    from ..predictor import Predictor

    return Predictor.from_weights(args.weights, args.config, device=args.device, min_size=args.min_size,
                                  max_size=args.max_size, fast=args.fast)


def run_jobs(args, jobs: list[Job], vis_paths: list[Path | None], dataset=None, store=None,
             keys: list[str] | None = None) -> tuple[list[dict], int, dict]:
    """Segment and track every job; returns (results, failures, timings). With `dataset`, the model's
    categories must be the dataset's (checked as soon as the model is loaded). With `store`
    (parts.VideoParts) each video's masks are spooled there and its tracks written as the part of
    `keys[k]`, streamed, instead of being returned (memory bounded by one track)."""
    from .pipeline import track_video
    from .tracker import TrackerConfig

    predictor = _predictor(args)
    model_ids = [predictor.category_id(i) for i in range(predictor.cfg.fcos.num_classes)]
    if dataset is not None and not set(model_ids) <= set(dataset.category_ids):
        raise VideoCLIError(f"the model's category ids {model_ids} are not all in {dataset.path.name}'s "
                            f"{dataset.category_ids}: train on (or convert to) the dataset's categories")
    config = TrackerConfig(min_score=args.score_threshold, new_track_score=args.new_track_score,
                           max_lost=args.max_lost)
    results, failures = [], 0
    totals = {"frames": 0, "model_s": 0.0, "tracking_s": 0.0, "wall_s": 0.0}
    for k, (job, vis) in enumerate(zip(jobs, vis_paths)):
        try:
            out = track_video(predictor, job.source, args.tracker, config, args.batch_size, vis,
                              progress=not args.no_progress, spool=None if store is None else store.spool_path())
        except VideoError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        try:
            if job.length is not None and out.num_frames != job.length:
                print(f"error: {job.source.info.path}: {out.num_frames} frames decoded but the dataset's video "
                      f"{job.video_id} has {job.length}; left out", file=sys.stderr)
                failures += 1
                continue
            entries = out.tracks.iter_results(job.video_id, model_ids, out.num_frames)
            if store is None:
                entries = list(entries)
                results.extend(entries)
                count = len(entries)
            else:
                count = store.write(keys[k], entries)
        finally:
            out.tracks.close()
        for key in totals:
            totals[key] += getattr(out, key)
        print(f"{job.source.info.path}: {out.num_frames} frames, {count} tracks, "
              f"{out.num_frames / max(out.wall_s, 1e-9):.2f} frames/s (model {1000 * out.model_s / out.num_frames:.0f} "
              f"ms/frame, tracking {1000 * out.tracking_s / out.num_frames:.1f} ms/frame)", flush=True)
    return results, failures, totals


def run_video(args: argparse.Namespace) -> int:
    _check_model_args(args)
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise VideoCLIError(f"--fps {args.fps}: must be a positive number")
    writable_file(args.output, "--output")
    if args.ann:
        existing_file(args.ann, "--ann")
    from .parts import VideoParts

    store, settings = VideoParts(Path(args.output)), _run_settings(args)
    store.prepare(settings, args.resume)
    jobs, dataset = _jobs_from_inputs(args.input, args.ann, args.fps)
    vis_paths = _vis_paths(args.vis, jobs)
    keys = [str(Path(job.source.info.path).resolve()) for job in jobs]
    store.start(settings)
    done = set(store.done()) & set(keys)
    if done:
        print(f"resuming: {len(done)} of {len(keys)} video(s) already done ({store.folder})", flush=True)
    todo = [k for k, key in enumerate(keys) if key not in done]
    failures = 0
    if todo:
        _, failures, _ = run_jobs(args, [jobs[k] for k in todo], [vis_paths[k] for k in todo], dataset, store,
                                  [keys[k] for k in todo])
    count, missing = store.merge(keys, Path(args.output))
    store.remove()
    print(f"wrote {count} tracks of {len(keys) - len(missing)} video(s) to {args.output}")
    return 1 if failures else 0


def _run_settings(args: argparse.Namespace) -> dict:
    """What makes two runs' results the same: a parts folder is only resumed by a run with these."""
    weights = Path(args.weights).resolve()
    ann = Path(args.ann).resolve() if args.ann else None
    return {"weights": str(weights), "weights_bytes": weights.stat().st_size, "config": args.config,
            "tracker": args.tracker, "score_threshold": args.score_threshold,
            "new_track_score": args.new_track_score, "max_lost": args.max_lost, "batch_size": args.batch_size,
            "min_size": args.min_size, "max_size": args.max_size, "fast": args.fast,
            "ann": None if ann is None else str(ann), "ann_bytes": None if ann is None else ann.stat().st_size}


def run_evaluate_video(args: argparse.Namespace) -> int:
    from .ytvis import load_dataset, load_results

    if (args.weights is None) == (args.results is None):
        raise VideoCLIError("give either --weights (run the model on --videos) or --results (score a results file)")
    existing_file(args.ann, "--ann")
    require_trackers("evaluate-video (HOTA, ID switches)")
    if args.metrics:
        writable_file(args.metrics, "--metrics")
    if args.results:
        existing_file(args.results, "--results")
        dataset = load_dataset(args.ann)
        results = load_results(args.results, dataset)
    else:
        _check_model_args(args)
        if args.videos is None:
            raise VideoCLIError("--weights needs --videos (the folder of the dataset's frames)")
        existing_dir(args.videos, "--videos")
        if args.output:
            writable_file(args.output, "--output")
        dataset = load_dataset(args.ann)
        root = Path(args.videos)
        jobs = [Job(open_frames(root / Path(v["file_names"][0]).parent, [root / f for f in v["file_names"]]),
                    v["id"], v["length"]) for v in dataset.videos]
        raw, failures, totals = run_jobs(args, jobs, [None] * len(jobs), dataset)
        if failures:
            raise VideoCLIError(f"{failures} video(s) could not be processed (see above); nothing scored")
        if args.output:
            from ..io import atomic_write_json

            atomic_write_json(args.output, raw)
        results = load_results_from_entries(raw, dataset)
        print(f"{totals['frames']} frames, {totals['frames'] / max(totals['wall_s'], 1e-9):.2f} frames/s; tracking "
              f"{100 * totals['tracking_s'] / max(totals['model_s'], 1e-9):.1f}% of the model time")
    return _score(args, dataset, results)


def load_results_from_entries(entries: list[dict], dataset) -> list[dict]:
    from .ytvis import check_track

    videos = {v["id"]: v for v in dataset.videos}
    return [check_track(r, f"results[{k}]", videos, set(dataset.category_ids), None, result=True)
            for k, r in enumerate(entries)]


def _score(args, dataset, results: list[dict]) -> int:
    from .evaluation import format_metrics, tracking_metrics, vis_ap

    t0 = time.perf_counter()
    ap = vis_ap(dataset, results)
    tracking = tracking_metrics(dataset, results, args.track_score)
    print(format_metrics(ap, tracking))
    print(f"({len(results)} result tracks, {len(dataset.videos)} videos, scored in {time.perf_counter() - t0:.1f} s)")
    if args.metrics:
        from ..io import atomic_write_json

        atomic_write_json(args.metrics, {"ap": ap, "tracking": tracking, "track_score": args.track_score})
    return 0
