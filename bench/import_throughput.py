"""Dataset import throughput: annotations per second through `python -m app import`, COCO and YOLO.

Generates a COCO dataset (a zip: annotations/instances_default.json + images/default/*.png, the shape
the Import & QA upload takes) and a YOLO segmentation folder (data.yaml, images/, labels/), then
imports each into a fresh workspace with the same call the command line makes
(`app.interop.imports.import_dataset`), timing the whole import (unzip, checks, decoding, rasterising, the
one transaction). The images are flat-coloured PNGs (the file sizes stay small; what is timed is the
per-annotation work), each annotation a random convex polygon.

    python -m bench.import_throughput                                 # 120k COCO annotations, 100k YOLO lines
    python -m bench.import_throughput --coco 20000 --yolo 20000       # a quicker run
    python -m bench.import_throughput --profile 25                    # + the 25 costliest functions (cProfile)

The goal (issue 20): 120k annotations / 100k YOLO lines well under a minute on 2 cores, and a cost
linear in the number of annotations (compare annotations/s of a small and a large run).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
import zipfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from bench.common import REPO, format_table, git_commit, parse_list, parse_size, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", type=lambda t: parse_list(t, int), default=[120_000],
                   help="COCO annotation counts to import, comma separated (120000; 0 skips COCO)")
    p.add_argument("--yolo", type=lambda t: parse_list(t, int), default=[100_000],
                   help="YOLO label lines to import, comma separated (100000; 0 skips YOLO)")
    p.add_argument("--per-image", type=int, default=100, help="annotations per image (100)")
    p.add_argument("--image-size", type=parse_size, default=(480, 640), help="HxW of the images (480x640)")
    p.add_argument("--vertices", type=int, default=12, help="vertices per polygon (12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, help="print the N costliest functions of each import")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "import_throughput.json")
    return p.parse_args(argv)


def polygons(rng: np.random.Generator, count: int, vertices: int) -> np.ndarray:
    """(count, vertices, 2) convex polygons in [0, 1]^2: points on ellipses of random centre and radii."""
    centre = rng.uniform(0.15, 0.85, (count, 1, 2))
    radius = rng.uniform(0.02, 0.12, (count, 1, 2))
    angle = np.sort(rng.uniform(0, 2 * np.pi, (count, vertices)), axis=1)
    return np.clip(centre + radius * np.stack([np.cos(angle), np.sin(angle)], -1), 0.0, 1.0)


def png_bytes(k: int, size: tuple[int, int]) -> bytes:
    """A flat-coloured PNG, different per k (the workspace stores identical images once)."""
    colour = (k % 256, (k // 256) % 256, 128)
    buffer = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def coco_zip(path: Path, annotations: int, per_image: int, size: tuple[int, int], vertices: int,
             seed: int) -> Path:
    h, w = size
    images = max(1, -(-annotations // per_image))
    shapes = polygons(np.random.default_rng(seed), annotations, vertices) * np.array([w, h])
    data = {"images": [{"id": k + 1, "file_name": f"{k:06d}.png", "height": h, "width": w} for k in range(images)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": []}
    for k, poly in enumerate(shapes):
        x0, y0 = poly.min(0)
        x1, y1 = poly.max(0)
        data["annotations"].append({
            "id": k + 1, "image_id": k // per_image + 1, "category_id": 1 + k % 2, "iscrowd": 0,
            "segmentation": [np.round(poly, 2).ravel().tolist()],
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "area": 1.0})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(data))
        for k in range(images):
            archive.writestr(f"images/default/{k:06d}.png", png_bytes(k, size))
    return path


def yolo_folder(root: Path, lines: int, per_image: int, size: tuple[int, int], vertices: int, seed: int) -> Path:
    images = max(1, -(-lines // per_image))
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [a, b]\n")
    shapes = polygons(np.random.default_rng(seed), lines, vertices)
    for k in range(images):
        (root / "images" / "train" / f"{k:06d}.png").write_bytes(png_bytes(k, size))
        rows = [f"{j % 2} " + " ".join(f"{v:.4f}" for v in shapes[j].ravel())
                for j in range(k * per_image, min(lines, (k + 1) * per_image))]
        (root / "labels" / "train" / f"{k:06d}.txt").write_text("\n".join(rows) + "\n")
    return root


def timed_import(workspace: Path, profile: int, **source) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process) to import ``source`` into a fresh workspace (and print
    the profile when asked). On a shared machine the CPU time is the steadier number."""
    from app.interop.imports import import_dataset
    from app.store.workspace import Workspace

    profiler = cProfile.Profile() if profile else None
    with Workspace.open(workspace) as ws:
        start, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        report = import_dataset(ws, **source)
        if profiler:
            profiler.disable()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if profiler:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(profile)
        print(stream.getvalue())
    return seconds, cpu, report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        tmp = Path(tmp)
        for kind, counts in (("coco", args.coco), ("yolo", args.yolo)):
            for count in (c for c in counts if c > 0):
                folder = tmp / f"{kind}-{count}"
                folder.mkdir()
                if kind == "coco":
                    source = {"ann": coco_zip(folder / "data.zip", count, args.per_image, args.image_size,
                                              args.vertices, args.seed)}
                    size_mb = source["ann"].stat().st_size / 2**20
                else:
                    source = {"yolo": yolo_folder(folder / "yolo", count, args.per_image, args.image_size,
                                                  args.vertices, args.seed)}
                    size_mb = sum(p.stat().st_size for p in source["yolo"].rglob("*") if p.is_file()) / 2**20
                seconds, cpu, report = timed_import(folder / "ws", args.profile, **source)
                assert report.instances == count, (report.instances, count)
                rows.append({"format": kind, "annotations": count, "images": report.images,
                             "input_mb": round(size_mb, 2), "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                             "annotations_per_s": round(count / seconds),
                             "annotations_per_cpu_s": round(count / cpu)})
                print(f"{kind}: {count} annotations in {seconds:.1f} s ({cpu:.1f} s CPU)", flush=True)
    print(format_table(rows, [("format", "format", "{}"), ("annotations", "annotations", "{}"),
                              ("images", "images", "{}"), ("input MB", "input_mb", "{:.1f}"),
                              ("seconds", "seconds", "{:.1f}"), ("CPU s", "cpu_s", "{:.1f}"),
                              ("annotations/s", "annotations_per_s", "{}"),
                              ("annotations/CPU s", "annotations_per_cpu_s", "{}")]))
    settings = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()}
    path = write_json(args.out, {
        "benchmark": "import_throughput", "settings": settings, "results": rows,
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpu_count": os.cpu_count(), "git_commit": git_commit()}})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
