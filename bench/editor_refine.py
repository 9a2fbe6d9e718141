"""Issue 10's editor targets: click-to-refine quality (NoC) and editing latency, through the app.

Quality, scored as interactive-segmentation benchmarks do, on the held-out fruits_nuts photos
(image ids 15, 16, 17 of trainval.json) with the bundled model: for every ground-truth object a
simulated annotator clicks the centre (the point farthest from the border) of the largest error
region - positive if it is missed, negative if it is extra - and the app's `/refine`
(`app.annotate.refine.Refiner.refine`) proposes a mask, until IoU 0.90 or 20 clicks. Reported: mean NoC@85
and NoC@90 (clicks to reach the IoU, 20 when never), the worst object's, the largest IoU drop of one
click, and mean IoU after 1, 2, 3 clicks; objects under 6,000 px on their own row; then the objects
that miss issue 22's targets (NoC@85 <= 2, NoC@90 <= 4, no click lowers the IoU by more than 0.01). Today's
"add at point" (`ImageLibrary.add_at_point`, = `ModelSession.segment_point`) takes one click and
cannot be refined: its NoC is 1 when that click reaches the IoU, else 20.

Latency, server time through the same handlers the browser calls (`app.web.handlers.Handlers`, which
include the picture, the table and the canvas scene): a 50-point brush stroke (width 25) on the
selected instance of an 800x600 and a 4000x3000 photo, and a refine click on an 800x600 photo
(the image's dense outputs cached, as after opening it). "page" is what the browser's editor
gets (scene + table), "edit only" the action alone, "API" adds the overlay picture that API
clients and the Click view get. Also the scene payload sizes.

    python -m bench.editor_refine                 # table + bench/results/editor_refine.json
    python -m bench.editor_refine --kudzu 16      # and the refine protocol on the kudzu val photos
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, format_table, write_json

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
FRUITS = REPO.parent / "shared" / "datasets" / "fruits_nuts" / "data"
KUDZU = REPO.parent / "shared" / "datasets" / "kudzu"
HELD_OUT = (15, 16, 17)
MAX_CLICKS = 20
SMALL = 6000  # px: objects under this are reported on their own (issue 22)
TARGETS = {"noc85": 2.5, "stroke_ms": 150, "refine_ms": 300, "worst_noc85": 2, "worst_noc90": 4, "worst_drop": 0.01}


def next_click(gt, current):
    """(x, y, positive) at the centre of the largest error region (distance-transform maximum)."""
    import cv2
    import numpy as np

    missed, extra = gt & ~current, current & ~gt
    best = None
    for region, positive in ((missed, True), (extra, False)):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
        if count > 1:
            k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[k, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, labels == k, positive)
    if best is None:
        return None
    dist = cv2.distanceTransform(np.pad(best[1], 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y), best[2]


def iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def refine_run(service, image_id: int, gt, max_clicks: int = MAX_CLICKS, stop: float = 0.90) -> list[float]:
    """IoU with the (H, W) bool `gt` after each click of the scripted annotator on image `image_id`: the first
    click at the object's interior, then the centre of the largest error region (positive where missed,
    negative where extra), through `Refiner.refine`, until IoU `stop` or `max_clicks` clicks."""
    import numpy as np

    from app.view import View

    view = View(image_id=image_id)
    current = np.zeros_like(gt)
    positive, negative, ious = [], [], []
    for _ in range(max_clicks):
        click = next_click(gt, current)
        if click is None:
            break
        (positive if click[2] else negative).append(list(click[:2]))
        if not positive:  # a first click is always positive (current is empty)
            break
        view, _ = service.refiner.refine(view, json.dumps(positive), json.dumps(negative))
        current = view.refine.mask
        ious.append(iou(gt, current))
        if ious[-1] >= stop:
            break
    return ious


def noc(ious, threshold: float) -> int:
    """Clicks until the IoU reaches `threshold` (MAX_CLICKS when never)."""
    reached = [n + 1 for n, v in enumerate(ious) if v >= threshold]
    return reached[0] if reached else MAX_CLICKS


def worst_drop(ious) -> float:
    """The largest IoU decrease from one click to the next (0 when none)."""
    return max([0.0] + [a - b for a, b in zip(ious, ious[1:])])


def quality(service, coco, image_ids) -> dict:
    import numpy as np

    refine_runs, point_runs, objects = [], [], []
    for coco_id in image_ids:
        info = coco.imgs[coco_id]
        report = service.images.add_files([FRUITS / "images" / info["file_name"]])
        image_id = report.image_ids[0]
        key = service.images.image_key(image_id)
        for ann in coco.imgToAnns[coco_id]:
            gt = coco.annToMask(ann).astype(bool)
            ious = refine_run(service, image_id, gt)
            refine_runs.append(ious)
            objects.append({"image_id": coco_id, "ann_id": ann["id"], "area": int(gt.sum()),
                            "noc85": noc(ious, 0.85), "noc90": noc(ious, 0.90), "worst_drop": worst_drop(ious),
                            "ious": ious})
            x, y, _ = next_click(gt, np.zeros_like(gt))
            point = service.session.segment_point(key, lambda: service.ws.get_image(image_id), x, y)
            point_runs.append([iou(gt, point.mask)])

    def after(runs, n):  # IoU after n clicks (the last one if it stopped earlier at >= 0.90)
        return statistics.mean(ious[min(n, len(ious)) - 1] for ious in runs)

    def row(name, runs, more=True):
        return {"method": name, "objects": len(runs), "noc85": statistics.mean(noc(r, 0.85) for r in runs),
                "noc90": statistics.mean(noc(r, 0.90) for r in runs),
                "max85": max(noc(r, 0.85) for r in runs), "max90": max(noc(r, 0.90) for r in runs),
                "drop": max(worst_drop(r) for r in runs) if more else None,
                "iou1": after(runs, 1), "iou2": after(runs, 2) if more else None,
                "iou3": after(runs, 3) if more else None}

    small = [r for r, o in zip(refine_runs, objects) if o["area"] < SMALL]
    large = [r for r, o in zip(refine_runs, objects) if o["area"] >= SMALL]
    rows = [row("refine (CondInst clicks)", refine_runs), row(f"refine, objects < {SMALL} px", small),
            row(f"refine, objects >= {SMALL} px", large), row("add at point (today)", point_runs, more=False)]
    return {"rows": rows, "per_object_ious": refine_runs, "objects": objects}


def kudzu_quality(service, images: int) -> dict:
    """The same protocol on the first `images` photos of the kudzu val split (VIA polygons, one class):
    a domain the bundled fruits model never saw, so the boundary work falls to the image guidance."""
    from bench.labeling.via import coco_masks, via_to_coco

    split = KUDZU / "val"
    coco, _ = via_to_coco(split / "via_region_data.json", split, "kudzu")
    masks = coco_masks(coco)
    runs, objects = [], []
    for info in coco["images"][:images]:
        image_id = service.images.add_files([split / info["file_name"]]).image_ids[0]
        for k, gt in enumerate(masks[info["id"]]):
            if not gt.any():
                continue
            ious = refine_run(service, image_id, gt)
            runs.append(ious)
            objects.append({"image": info["file_name"], "ann_id": k, "area": int(gt.sum()), "noc85": noc(ious, 0.85),
                            "noc90": noc(ious, 0.90), "worst_drop": worst_drop(ious), "ious": ious})
    row = {"method": f"refine on kudzu val ({images} photos)", "objects": len(runs),
           "noc85": statistics.mean(noc(r, 0.85) for r in runs), "noc90": statistics.mean(noc(r, 0.90) for r in runs),
           "max85": max(noc(r, 0.85) for r in runs), "max90": max(noc(r, 0.90) for r in runs),
           "drop": max(worst_drop(r) for r in runs),
           **{f"iou{n}": statistics.mean(r[min(n, len(r)) - 1] for r in runs) for n in (1, 2, 3)}}
    return {"rows": [row], "objects": objects}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def latency(service, handlers, photo_800: Path, tmp: Path, repeats: int) -> list[dict]:
    import cv2
    import numpy as np

    from app.view import View

    rows = []
    big = tmp / "photo_4000x3000.jpg"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(photo_800)), (4000, 3000), interpolation=cv2.INTER_CUBIC))
    for path in (photo_800, big):
        image_id = service.images.add_files([path]).image_ids[0]
        record = service.ws.get_image_record(image_id)
        h, w = record.height, record.width
        mask = np.zeros((h, w), bool)
        mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
        target = service.ws.add_instance(image_id, service.ws.categories()[0].id, mask)
        view = handlers.annotate(View(image_id=image_id, selected=target, picture=False))[0]  # the page's editor
        t = np.linspace(0, 1, 50)
        points = json.dumps([[int(w * (0.2 + 0.5 * v)), int(h * (0.3 + 0.3 * np.sin(6 * v)))] for v in t])
        handler_ms, edit_ms, api_ms = [], [], []
        api_view = replace(view, picture=True)  # an API client also gets the overlay picture
        for _ in range(repeats):
            begin = time.perf_counter()
            out = handlers.on_stroke(view, "brush", points, 25, "overlap", 0)
            handler_ms.append((time.perf_counter() - begin) * 1000)
            handlers.on_undo(out[0])
            begin = time.perf_counter()
            out = handlers.on_stroke(api_view, "brush", points, 25, "overlap", 0)
            api_ms.append((time.perf_counter() - begin) * 1000)
            handlers.on_undo(out[0])
            begin = time.perf_counter()
            service.edits.stroke(view, "brush", points, 25)
            edit_ms.append((time.perf_counter() - begin) * 1000)
            handlers.on_undo(out[0])
        rows.append({"action": f"brush stroke, 50 points ({w}x{h})", "ms": statistics.median(handler_ms),
                     "edit_ms": statistics.median(edit_ms), "api_ms": statistics.median(api_ms),
                     "target_ms": TARGETS["stroke_ms"]})
    image_id = service.ws.list_images()[0].id
    view = handlers.annotate(View(image_id=image_id, picture=False))[0]
    inst = max(service.ws.instances(image_id), key=lambda i: i.area)
    ys, xs = np.nonzero(inst.mask)
    click = json.dumps([[int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]])
    handlers.on_refine(view, click, "[]", 0)  # warm: the image's dense outputs are cached
    rows.append({"action": "refine click (800x600)", "ms": timed(lambda: handlers.on_refine(view, click, "[]", 0),
                                                                 repeats),
                 "edit_ms": timed(lambda: service.refiner.refine(view, click, "[]"), repeats),
                 "api_ms": timed(lambda: handlers.on_refine(replace(view, picture=True), click, "[]", 0), repeats),
                 "target_ms": TARGETS["refine_ms"]})
    fresh = handlers.annotate(View(image_id=image_id))
    again = handlers.annotate(fresh[0])
    rows.append({"action": "scene payload, first (with the picture) KB", "ms": len(fresh[-1]) / 1024})
    rows.append({"action": "scene payload, after an edit KB", "ms": len(again[-1]) / 1024})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kudzu", type=int, default=0, metavar="N",
                        help="also run the refine protocol on the first N kudzu val photos (bundled fruits model)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "editor_refine.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from pycocotools.coco import COCO

    from app.web.handlers import Handlers
    from app.service import Service

    torch.set_num_threads(args.threads)
    coco = COCO(str(FRUITS / "trainval.json"))
    with tempfile.TemporaryDirectory() as tmp:
        service = Service.create(Path(tmp) / "ws", args.weights)
        try:
            found = quality(service, coco, HELD_OUT)
            if args.kudzu:
                kudzu = kudzu_quality(service, args.kudzu)
                found["rows"].append(kudzu["rows"][0])
                found["kudzu_objects"] = kudzu["objects"]
            photo = FRUITS / "images" / coco.imgs[HELD_OUT[0]]["file_name"]
            speed = latency(service, Handlers(service), photo, Path(tmp), args.repeats)
        finally:
            service.close()
    print(format_table(found["rows"], [("method", "method", "{}"), ("objects", "objects", "{}"),
                                       ("NoC@85", "noc85", "{:.2f}"), ("NoC@90", "noc90", "{:.2f}"),
                                       ("worst NoC@85", "max85", "{}"), ("worst NoC@90", "max90", "{}"),
                                       ("worst click drop", "drop", "{:.3f}"),
                                       ("IoU@1", "iou1", "{:.3f}"), ("IoU@2", "iou2", "{:.3f}"),
                                       ("IoU@3", "iou3", "{:.3f}")]))
    print()
    print(format_table(speed, [("action", "action", "{}"), ("page ms (KB)", "ms", "{:.1f}"),
                               ("edit only ms", "edit_ms", "{:.1f}"), ("API ms (+ picture)", "api_ms", "{:.1f}"),
                               ("target ms", "target_ms", "{}")]))
    print()
    print(format_table([o for o in found["objects"] if o["noc85"] > 2 or o["noc90"] > 4 or o["worst_drop"] > 0.01],
                       [("image", "image_id", "{}"), ("ann", "ann_id", "{}"), ("px", "area", "{}"),
                        ("NoC@85", "noc85", "{}"), ("NoC@90", "noc90", "{}"), ("worst drop", "worst_drop", "{:.3f}")]))
    write_json(args.output, {"quality": found["rows"], "per_object_ious": found["per_object_ious"],
                             "objects": found["objects"], "kudzu_objects": found.get("kudzu_objects", []),
                             "latency": speed, "targets": TARGETS, "held_out_image_ids": list(HELD_OUT),
                             "weights": str(args.weights), "threads": args.threads})
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
