"""Prediction at scale: images/s of `condinst predict` for 1 and 2 processes and several batch sizes.

    PYTHONPATH=. python bench/predict_scale.py [--images 24] [--batch-sizes 1,4] [--procs 1,2]

Runs the command line itself on the bundled model (assets/default_model/model.pth) over `--images`
photos of shared/datasets/fruits_nuts (its 18 photos, cycled under new names up to the count): one
process with `python -m condinst predict`, N processes with `torchrun --standalone --nproc_per_node N`.
A run's time is the whole command, wall clock (start-up, model load, decoding, the model, mask
pasting, COCO encoding, the merge); each run's merged file is checked to hold every image once.
Prints a table, writes bench/results/predict_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, environment, format_table, parse_list, write_json  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "datasets" / "fruits_nuts" / "data" / "images"
WEIGHTS = ROOT / "assets" / "default_model" / "model.pth"


def photos(folder: Path, count: int) -> Path:
    """`count` photos in `folder`, the dataset's cycled under new names (photo_000.jpg, ...)."""
    source = sorted(PHOTOS.glob("*.jpg"))
    for i in range(count):
        shutil.copyfile(source[i % len(source)], folder / f"photo_{i:03d}.jpg")
    return folder


def run(procs: int, batch_size: int, images: Path, output: Path, extra: list[str]) -> dict:
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(procs)]
                if procs > 1 else [sys.executable])
    argv = [*launcher, "-m", "condinst", "predict", "--weights", str(WEIGHTS), "--input", str(images), "--output",
            str(output), "--batch-size", str(batch_size), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if procs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    names = {r["file_name"] for r in json.loads(output.read_text())}
    count = len(list(images.iterdir()))
    if len(names) != count:
        raise SystemExit(f"{output}: {len(names)} images in the merged file, expected {count}")
    return {"processes": procs, "batch_size": batch_size, "images": count, "seconds": seconds,
            "images_per_s": count / seconds, "threads_per_process": int(env.get("OMP_NUM_THREADS", 0)) or None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24, help="number of photos (default %(default)s)")
    parser.add_argument("--procs", type=lambda t: parse_list(t, int), default=[1, 2], help="process counts, 1,2")
    parser.add_argument("--batch-sizes", type=lambda t: parse_list(t, int), default=[1, 4], help="batch sizes, 1,4")
    parser.add_argument("--fast", action="store_true", help="pass --fast to predict")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "predict_scale.json")
    args = parser.parse_args()
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="predict_scale-"))
    (tmp / "images").mkdir()
    images = photos(tmp / "images", args.images)
    rows = []
    try:
        for procs in args.procs:
            for batch_size in args.batch_sizes:
                row = run(procs, batch_size, images, tmp / f"out-{procs}-{batch_size}.json",
                          ["--fast"] if args.fast else [])
                rows.append(row)
                print(f"{procs} process(es), batch {batch_size}: {row['images_per_s']:.2f} images/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(format_table(rows, [("processes", "processes", "{}"), ("batch size", "batch_size", "{}"),
                              ("images", "images", "{}"), ("wall s", "seconds", "{:.1f}"),
                              ("images/s", "images_per_s", "{:.2f}")]))
    write_json(args.out, {"benchmark": "predict_scale", "model": str(WEIGHTS.relative_to(ROOT)), "fast": args.fast,
                          "rows": rows, "environment": environment(torch.device("cpu"))})


if __name__ == "__main__":
    main()
