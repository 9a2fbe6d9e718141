"""Peak memory of `condinst predict` against image size, one fresh process per size.

For every size (megapixels, 4:3) a synthetic image is written to a temporary folder and two
processes run on it, each watched by a memory guard that stops it past `--limit-gb`:

    predict   the real command, `python -m condinst predict --weights W --input IMG --output OUT`;
              its peak RSS comes from the kernel (os.wait4) and is the number that counts
    stages    the same work step by step in one process (`--child`), printing the peak RSS so far
              after each step: model load, read (decode), preprocess (resize, normalise, pad),
              network (heads, detections, mask logits at stride 4), postprocess (boxes and masks
              at the original size), COCO (RLE encoding); the step where the peak jumps is the
              one that costs the memory

    python -m bench.memory                                     # 1, 12, 50, 100 MP, bundled model
    python -m bench.memory --megapixels 1,12 --limit-gb 4
    python -m bench.memory --kind black-png --megapixels 99    # the all-black PNG of issue 15
    python -m bench.memory --megapixels "" --video-frames 500,2000 --video-repos /work/main,.

Video rows (`--video-frames`): peak RSS of `python -m condinst video` on a generated mp4 of that
many frames (`--video-size`, a window panning over the sample photo), with a tiny random-weight
R-50 CondInst that gives `--video-detections` detections on every frame (scores 0 and up all kept,
controller weights drawn with std 1 so that the masks are non-empty and irregular, about 1 KB of RLE
each), linked by `--video-tracker` (default bytetrack, which keeps overlapping random masks that
the condinst tracker drops as duplicates), so that every frame adds many masks to the results
(about 15 a frame at the defaults). Each checkout of `--video-repos` runs the
same command (its own `condinst`), e.g. main before a change and this one after it.

Images: `photo` (default) is a bundled sample photo (dates, figs, hazelnuts on a plain background)
resized to the target size and saved as JPEG, so the bundled model finds its usual objects;
`black-png` is an all-black grayscale PNG (tiny on disk, huge decoded).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/memory.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, RESULTS_DIR, environment, format_table, parse_list, settings_of, write_json

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
SAMPLE = REPO / "assets" / "samples" / "fruits_nuts_7.jpg"
STAGES = ("model", "read", "preprocess", "network", "postprocess", "coco")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=lambda s: parse_list(s, float), default=[1, 12, 50, 100],
                        help="image sizes in megapixels, 4:3 landscape (default 1,12,50,100)")
    parser.add_argument("--kind", choices=("photo", "black-png"), default="photo", help="synthetic image kind")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="checkpoint (default: bundled model)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the measured processes")
    parser.add_argument("--limit-gb", type=float, default=6.0,
                        help="stop a measured process whose RSS passes this (protects a shared machine)")
    parser.add_argument("--no-stages", action="store_true", help="measure only the predict command")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "memory.json", help="JSON result file")
    parser.add_argument("--video-frames", type=lambda s: parse_list(s, int), default=[],
                        help="also measure `condinst video` on generated videos of these frame counts (e.g. 2000)")
    parser.add_argument("--video-size", default="240x320", help="HEIGHTxWIDTH of the video frames (default 240x320)")
    parser.add_argument("--video-detections", type=int, default=20, help="detections forced per frame (default 20)")
    parser.add_argument("--video-tracker", choices=("condinst", "bytetrack"), default="bytetrack",
                        help="the video command's --tracker (default bytetrack)")
    parser.add_argument("--video-repos", type=parse_list, default=[str(REPO)],
                        help="checkouts whose `condinst video` runs (default: this one)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run the stages on this image
    return parser.parse_args(argv)


# ---- the measured processes -----------------------------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_stages(image_path: Path, weights: Path) -> None:
    """The predict pipeline step by step; prints one JSON line per step: name, peak MB so far, seconds."""
    import torch

    from condinst.coco import result_to_coco
    from condinst.postprocess import postprocess
    from condinst.predictor import Predictor
    from condinst.preprocess import read_image

    def report(stage: str, start: float, **extra) -> None:
        print(json.dumps({"stage": stage, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - start,
                          **extra}), flush=True)

    start = time.perf_counter()
    predictor = Predictor.from_weights(weights)
    report("model", start)
    start = time.perf_counter()
    image = read_image(image_path)
    report("read", start, image_size=list(image.shape[:2]))
    with torch.no_grad():  # Predictor.__call__, one step at a time
        start = time.perf_counter()
        batch, sizes = predictor.prepare([image])
        report("preprocess", start, input_size=list(sizes[0]))
        start = time.perf_counter()
        out = predictor.model.inference(batch, sizes)[0]
        report("network", start, detections=len(out.detections))
        start = time.perf_counter()
        result = postprocess(out.detections, out.mask_logits, tuple(batch.shape[-2:]), sizes[0], image.shape[:2],
                             predictor.cfg.mask_head.mask_threshold)
        del out
        crops = result.instance_masks.crops  # per-instance masks: crops, never (K, H, W)
        report("postprocess", start, instances=len(result), masks_mb=sum(c.numel() for c in crops) / 2**20)
    start = time.perf_counter()
    k = predictor.cfg.fcos.num_classes
    entries = result_to_coco(result, [predictor.category_id(i) for i in range(k)])
    report("coco", start, entries=len(entries))


def watch(command: list[str], limit_mb: float, env: dict[str, str], cwd: Path = REPO) -> dict:
    """Run `command`; its peak RSS (kernel's count), seconds, exit code, stdout; killed past `limit_mb`."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = {"killed_at_mb": None}

    def guard() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.returncode is None:
            try:
                rss_kb = next(int(line.split()[1]) for line in status.read_text().splitlines()
                              if line.startswith("VmRSS:"))
            except (OSError, StopIteration, ValueError):
                return
            if rss_kb / 1024 > limit_mb:
                state["killed_at_mb"] = rss_kb / 1024
                proc.kill()
                return
            time.sleep(0.05)

    threading.Thread(target=guard, daemon=True).start()
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    errors: list[str] = []
    err_reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    err_reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    err_reader.join()
    return {"peak_mb": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - start,
            "returncode": proc.returncode, "killed_at_mb": state["killed_at_mb"],
            "stdout": "".join(output), "stderr": "".join(errors)[-2000:]}


# ---- synthetic images -------------------------------------------------------------------------------

def image_size(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 landscape image of about `megapixels`."""
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    return max(1, round(width * 3 / 4)), max(1, width)


def write_image(kind: str, size: tuple[int, int], folder: Path) -> Path:
    from PIL import Image

    h, w = size
    Image.MAX_IMAGE_PIXELS = None  # we make the large images on purpose
    if kind == "black-png":
        path = folder / f"black_{h}x{w}.png"
        Image.new("L", (w, h), 0).save(path)
    else:
        path = folder / f"photo_{h}x{w}.jpg"
        with Image.open(SAMPLE) as im:
            im.convert("RGB").resize((w, h), Image.BILINEAR).save(path, quality=90)
    return path


# ---- videos -----------------------------------------------------------------------------------------

def write_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """An mp4 of `frames` (H, W) frames panning over the sample photo, encoded one frame at a time."""
    import av
    import numpy as np
    from PIL import Image

    h, w = size
    with Image.open(SAMPLE) as im:
        photo = im.convert("RGB")
    pw, ph = photo.size
    cw, ch = min(pw, int(ph * w / h * 0.8)), int(ph * 0.8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for t in range(frames):
            x0 = int((pw - cw) * (t % 200) / 199)  # back and forth every 200 frames
            image = np.asarray(photo.resize((w, h), Image.BILINEAR, box=(x0, (ph - ch) // 2, x0 + cw, (ph + ch) // 2)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_forced_model(path: Path, detections: int, seed: int = 0) -> Path:
    """A tiny random-weight R-50 CondInst checkpoint giving `detections` detections per frame."""
    import torch

    from bench.models import condinst_config, force_detections, give_boxes_extent
    from condinst.checkpoint import save_checkpoint
    from condinst.model import CondInst

    cfg = force_detections(condinst_config("MS_R_50_1x", tiny=True), detections, min_size=128, max_size=192)
    torch.manual_seed(seed)
    model = give_boxes_extent(CondInst(cfg))
    torch.nn.init.normal_(model.controller.weight, std=1.0)  # large filters: irregular, non-empty masks
    return save_checkpoint(path, model, cfg)


def measure_video(frames: int, args: argparse.Namespace, folder: Path, weights: Path,
                  env: dict[str, str]) -> list[dict]:
    """One row per checkout: `condinst video` peak RSS on a video of `frames` frames."""
    size = tuple(int(v) for v in args.video_size.lower().split("x"))
    video = write_video(folder / f"video_{frames}.mp4", frames, size)
    rows = []
    for repo in args.video_repos:
        output = folder / "video_results.json"
        run = watch([sys.executable, "-m", "condinst", "video", "--weights", str(weights), "--input", str(video),
                     "--output", str(output), "--score-threshold", "0", "--new-track-score", "0",
                     "--tracker", args.video_tracker, "--no-progress"],
                    args.limit_gb * 1024, {**env, "PYTHONPATH": str(Path(repo).resolve())}, cwd=Path(repo).resolve())
        row = {"checkout": str(repo), "commit": _commit(Path(repo)), "frames": frames, "frame_size": list(size),
               "detections_per_frame": args.video_detections, "peak_mb": run["peak_mb"], "seconds": run["seconds"],
               "returncode": run["returncode"], "killed_at_mb": run["killed_at_mb"]}
        if run["returncode"] == 0:
            entries = json.loads(output.read_text())
            row.update(tracks=len(entries), masks=sum(s is not None for e in entries for s in e["segmentations"]),
                       results_mb=output.stat().st_size / 2**20)
        else:
            row["error"] = run["stderr"].strip().splitlines()[-1:]
        output.unlink(missing_ok=True)
        rows.append(row)
        print(f"  video {frames} frames, {repo}: peak {row['peak_mb']:.0f} MB in {row['seconds']:.1f} s", flush=True)
    video.unlink()
    return rows


def _commit(repo: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


# ---- the benchmark ---------------------------------------------------------------------------------

def measure(megapixels: float, args: argparse.Namespace, folder: Path, env: dict[str, str]) -> dict:
    size = image_size(megapixels)
    path = write_image(args.kind, size, folder)
    row = {"megapixels": size[0] * size[1] / 1e6, "image_size": list(size), "file_mb": path.stat().st_size / 2**20}
    output = folder / "results.json"
    run = watch([sys.executable, "-m", "condinst", "predict", "--weights", str(args.weights), "--input", str(path),
                 "--output", str(output)], args.limit_gb * 1024, env)
    row.update(predict_peak_mb=run["peak_mb"], predict_seconds=run["seconds"], predict_returncode=run["returncode"],
               predict_killed_at_mb=run["killed_at_mb"])
    if run["returncode"] == 0:
        row["detections"] = len(json.loads(output.read_text()))
    elif run["killed_at_mb"] is None:
        row["predict_error"] = run["stderr"].strip().splitlines()[-1:]
    if not args.no_stages:
        staged = watch([sys.executable, "-m", "bench.memory", "--child", str(path), "--weights", str(args.weights)],
                       args.limit_gb * 1024, env)
        stages = [json.loads(line) for line in staged["stdout"].splitlines() if line.startswith("{")]
        row["stages"] = stages
        row["stages_killed_at_mb"] = staged["killed_at_mb"]
        for stage in stages:
            row[f"{stage['stage']}_mb"] = stage["peak_mb"]
        if len(stages) < len(STAGES):
            row["stages_stopped_in"] = STAGES[len(stages)]
        elif "network_mb" in row:
            row["postprocess_added_mb"] = row["postprocess_mb"] - row["network_mb"]
    row["status"] = ("ok" if run["returncode"] == 0 else f"killed > {args.limit_gb:g} GB" if run["killed_at_mb"]
                     else f"exit {run['returncode']}")
    path.unlink()
    output.unlink(missing_ok=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        import torch

        torch.set_num_threads(args.threads)
        run_stages(args.child, args.weights)
        return {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    import torch

    print(f"memory benchmark: {args.kind} images {args.megapixels} MP, {args.weights}, limit {args.limit_gb} GB",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="condinst-memory-") as tmp:
        for megapixels in args.megapixels:
            row = measure(megapixels, args, Path(tmp), env)
            rows.append(row)
            print(f"  {row['megapixels']:.1f} MP {row['image_size'][0]}x{row['image_size'][1]}: predict peak "
                  f"{row['predict_peak_mb']:.0f} MB in {row['predict_seconds']:.1f} s ({row['status']})", flush=True)
        video_rows = []
        if args.video_frames:
            weights = write_forced_model(Path(tmp) / "forced.pth", args.video_detections)
            for frames in args.video_frames:
                video_rows += measure_video(frames, args, Path(tmp), weights, env)
    payload = {"benchmark": "memory", "environment": environment(torch.device("cpu")), "settings": settings_of(args),
               "results": rows, "video_results": video_rows}
    if video_rows:
        print()
        print(format_table(video_rows, [("checkout", "checkout", "{}"), ("commit", "commit", "{}"),
                                        ("frames", "frames", "{}"), ("dets/frame", "detections_per_frame", "{}"),
                                        ("masks", "masks", "{}"), ("results MB", "results_mb", "{:.1f}"),
                                        ("video peak MB", "peak_mb", "{:.0f}"), ("s", "seconds", "{:.1f}")]))
    if rows:
        print()
        print(format_table(rows, [("MP", "megapixels", "{:.1f}"), ("predict peak MB", "predict_peak_mb", "{:.0f}"),
                                  ("s", "predict_seconds", "{:.1f}"), ("status", "status", "{}"),
                                  ("detections", "detections", "{}"), ("model MB", "model_mb", "{:.0f}"),
                                  ("read MB", "read_mb", "{:.0f}"), ("preprocess MB", "preprocess_mb", "{:.0f}"),
                                  ("network MB", "network_mb", "{:.0f}"),
                                  ("postprocess MB", "postprocess_mb", "{:.0f}"),
                                  ("COCO MB", "coco_mb", "{:.0f}"),
                                  ("postprocess adds MB", "postprocess_added_mb", "{:.0f}")]))
        print("(stage columns: peak RSS of the stages process after that step; '-' = not reached, stopped at "
              f"--limit-gb {args.limit_gb:g})")
    print(f"\nwrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
