"""A video in the app: upload speed, peak memory against video length, track operations, YouTube-VIS export.

For each length, a camera pans over the sample photo (`bench.video.camera_frames`) and the frames are
written as an mp4 (in this process); a fresh process then opens a new workspace with the bundled
model and times, through the service the page calls:

    upload     decode (streamed), segment (batches of 4), track and store every frame (one transaction)
    set class  a track's class on all its frames (the longest track; one undo step)
    split      that track at its middle frame;  merge  the two parts again;  undo  of the merge
    export     the sequence as a YouTube-VIS zip (frames + JSON)

Peak memory is the process's maximum resident set size (ru_maxrss) after the upload and after
everything (Python, torch and the model included): a streamed upload keeps it nearly flat as the
video gets longer (what grows is the predictions' RLEs, held until the one transaction).

    python -m bench.app_video                          # 30 and 120 frames of 360x480, 2 threads
    python -m bench.app_video --frames 300 --threads 1
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, format_table, parse_list, parse_size, write_json

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=lambda t: parse_list(t, int), default=[30, 120], help="video lengths (30,120)")
    p.add_argument("--frame-size", type=parse_size, default=(360, 480), help="HxW of the frames (360x480)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the app process (2)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model (the bundled one)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "app_video.json")
    p.add_argument("--raw-masks", action="store_true",
                   help="the app's --raw-masks: the model's own masks (default: snapped to the image's edges)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one measurement, in a fresh process
    return p.parse_args(argv)


def measure(video: Path, weights: Path, threads: int, snap_edges: bool = True) -> dict:
    """Everything the module docstring lists, for one video, in this process."""
    import torch

    from app.service import Service

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-app-video-") as tmp:
        service = Service.create(Path(tmp) / "ws", weights, max_video_frames=100_000, snap_edges=snap_edges)
        try:
            row: dict = {}
            t0 = time.perf_counter()
            report = service.sequences.add_video(video)
            row["upload_s"] = time.perf_counter() - t0
            row["upload_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            row.update(frames=report.frames, instances=report.instances, tracks=report.tracks,
                       upload_fps=report.frames / row["upload_s"])
            frames = service.sequences.frame_ids(report.sequence_id)
            track = max(service.tracks.tracks(report.sequence_id), key=lambda t: len(t.frames))
            anchor = frames[track.frames[len(track.frames) // 2]]
            other = next(c.id for c in service.ws.categories() if c.id != track.category_id)
            for key, action in (("set_class_ms", lambda: service.tracks.set_class(anchor, track.id, other)),
                                ("split_ms", lambda: service.tracks.split(anchor, track.id,
                                                                          track.frames[len(track.frames) // 2])),
                                ("merge_ms", lambda: service.tracks.merge(
                                    anchor, track.id, max(t.id for t in service.tracks.tracks(report.sequence_id)))),
                                ("undo_ms", lambda: service.ws.undo(anchor)),
                                ("export_ms", lambda: service.export_ytvis_zip(min_score=0.3))):
                t0 = time.perf_counter()
                action()
                row[key] = 1000 * (time.perf_counter() - t0)
            row["track_frames"] = len(track.frames)
        finally:
            service.close()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.weights, args.threads, not args.raw_masks)))
        return {}
    import torch

    from bench.video import camera_frames
    from condinst.video.render import VideoWriter

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-app-video-") as tmp:
        for count in args.frames:
            video = Path(tmp) / f"pan-{count}.mp4"
            writer = VideoWriter(video, 10.0)
            for frame in camera_frames(count, args.frame_size, False, 0):
                writer.write(frame)
            writer.close()
            done = subprocess.run([sys.executable, "-m", "bench.app_video", "--child", str(video), "--weights",
                                   str(args.weights), "--threads", str(args.threads)]
                                  + (["--raw-masks"] if args.raw_masks else []), cwd=REPO, capture_output=True,
                                  text=True, check=True)
            rows.append({"video": f"{count} x {args.frame_size[1]}x{args.frame_size[0]}",
                         **json.loads(done.stdout.strip().splitlines()[-1])})
            print(f"{count} frames done", flush=True)
    columns = [("video", "video", "{}"), ("upload s", "upload_s", "{:.1f}"), ("frames/s", "upload_fps", "{:.2f}"),
               ("tracks", "tracks", "{}"), ("set class ms", "set_class_ms", "{:.0f}"), ("split ms", "split_ms", "{:.0f}"),
               ("merge ms", "merge_ms", "{:.0f}"), ("undo ms", "undo_ms", "{:.0f}"),
               ("ytvis zip ms", "export_ms", "{:.0f}"), ("peak RSS after upload MB", "upload_peak_rss_mb", "{:.0f}"),
               ("peak RSS MB", "peak_rss_mb", "{:.0f}")]
    print(format_table(rows, columns))
    payload = {"benchmark": "app_video", "settings": {"frames": args.frames, "frame_size": list(args.frame_size),
                                                      "threads": args.threads, "weights": str(args.weights),
                                                      "snap_edges": not args.raw_masks},
               "torch": torch.__version__, "results": rows}
    print(f"wrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
