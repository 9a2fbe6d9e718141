"""Server time and peak memory of the app's actions on large photos (issue 9's big-photo targets).

For each size, a fresh process makes two photos of that size (a held-out fruits_nuts sample scaled
up, with fine noise so the JPEG is photo-like), opens a new workspace with the bundled model and
times, through the same handlers the browser calls (`app.web.handlers.Handlers`, which include drawing
the picture; the JPEG encoding Gradio does is added):

    upload      upload + segment one photo (decode, model, masks, store)
    select      a click that selects an instance
    brush       a brush click on the selected instance
    undo        undo of that brush click
    next        next image

Peak memory is the process's maximum resident set size (ru_maxrss) after all actions, minus nothing:
it includes Python, torch and the model. Targets (2 cores, 12 MP): every action <= 300 ms, upload
<= 5 s, peak <= 2 GB; 50 MP within the same memory.

    python -m bench.app_large_image                     # 12 MP and 50 MP
    python -m bench.app_large_image --sizes 3000x4000 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, format_table, parse_size, write_json

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
SAMPLE = REPO / "assets" / "samples" / "fruits_nuts_9.jpg"
TARGETS_MS = {"select": 300, "brush": 300, "undo": 300, "next": 300, "upload": 5000}


def make_photo(path: Path, height: int, width: int, seed: int) -> None:
    import cv2
    import numpy as np

    base = cv2.imread(str(SAMPLE), cv2.IMREAD_COLOR)
    big = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(seed).integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    big = np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 90])


def measure(height: int, width: int, repeats: int, threads: int, weights: Path, snap_edges: bool = True) -> dict:
    """Run in a fresh process: returns per-action median ms and the peak RSS."""
    import cv2
    import numpy as np
    import torch

    from app.web.handlers import Handlers
    from app.service import Service

    torch.set_num_threads(threads)
    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    photos = [folder / f"photo{k}.jpg" for k in range(2)]
    for k, path in enumerate(photos):
        make_photo(path, height, width, k)
    service = Service.create(folder / "ws", weights, snap_edges=snap_edges)
    handlers = Handlers(service)
    times: dict[str, list[float]] = {key: [] for key in TARGETS_MS}

    def timed(key: str, fn):
        start = time.perf_counter()
        out = fn()
        picture = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if isinstance(picture, np.ndarray):
            cv2.imencode(".jpg", picture)  # what Gradio does with the picture
        times[key].append((time.perf_counter() - start) * 1000)
        return out

    view = service.initial_view()
    for k, photo in enumerate(photos):
        out = timed("upload", lambda: handlers.on_upload(view, [str(photo)], progress=lambda *a, **kw: None))
        view = out[0]
    view = service.actions.go_to(view, service.ws.list_images()[0].id)
    target = max(service.actions.visible(view), key=lambda inst: inst.area)
    bx, by, bw, bh = target.bbox
    ys, xs = np.nonzero(target.preview)
    scale = target.preview.shape[0] / height
    x, y = int(xs[len(xs) // 2] / scale), int(ys[len(ys) // 2] / scale)
    for _ in range(repeats):
        view = timed("select", lambda: handlers.on_click(view, x, y, "select", 25, 0, False))[0]
        if view.selected != target.id:
            view = service.actions.select(view, target.id)
        edge_x = int(bx + bw)  # paint at the box edge, so every click changes the mask
        view = timed("brush", lambda: handlers.on_click(view, min(edge_x, width - 1), int(by + bh / 2), "brush",
                                                       max(25, width // 80), 0, False))[0]
        view = timed("undo", lambda: handlers.on_undo(view))[0]
        view = timed("next", lambda: handlers.on_next(view))[0]
        view = handlers.on_next(view)[0]
    service.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"size": f"{width}x{height}", "megapixels": round(width * height / 1e6, 1), "peak_mb": round(peak_mb)}
    for key, values in times.items():
        row[f"{key}_ms"] = round(statistics.median(values), 1)
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [parse_size(v) for v in s.split(",")],
                        default=[(3000, 4000), (6120, 8160)], help="HxW list (default 3000x4000,6120x8160)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "app_large_image.json")
    parser.add_argument("--raw-masks", action="store_true",
                        help="the app's --raw-masks: masks not snapped to the image's edges (default: snapped)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:  # one measurement in this process
        height, width = parse_size(args.child)
        print(json.dumps(measure(height, width, args.repeats, args.threads, args.weights, not args.raw_masks)))
        return 0
    rows = []
    for height, width in args.sizes:
        command = [sys.executable, "-m", "bench.app_large_image", "--child", f"{height}x{width}", "--repeats",
                   str(args.repeats), "--threads", str(args.threads), "--weights", str(args.weights)] \
            + (["--raw-masks"] if args.raw_masks else [])
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    columns = [("size", "size", "{}"), ("MP", "megapixels", "{:.1f}"), ("upload+segment ms", "upload_ms", "{:.0f}"),
               ("select ms", "select_ms", "{:.0f}"), ("brush ms", "brush_ms", "{:.0f}"), ("undo ms", "undo_ms", "{:.0f}"),
               ("next ms", "next_ms", "{:.0f}"), ("peak MB", "peak_mb", "{:.0f}")]
    print(format_table(rows, columns))
    write_json(args.output, {"targets_ms": TARGETS_MS, "target_peak_mb": 2048, "threads": args.threads,
                             "snap_edges": not args.raw_masks,
                             "weights": str(args.weights), "rows": rows})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
