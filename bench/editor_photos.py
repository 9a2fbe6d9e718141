"""Whole photos made right: the scripted annotator fixes every object of the held-out fruits photos (issue 22).

Each held-out fruits_nuts photo (ids 15, 16, 17) is added to a fresh workspace and segmented by the model
(the bundled one by default); then `bench.labeling.annotator.Annotator` makes it match the ground truth
through the app's own service actions, the ones the editor's channel calls (score slider, resolve
overlaps, select, refine clicks + Enter, brush / eraser strokes, polygon vertices + Enter, class keys,
Delete, mark reviewed), until every object has an instance at IoU >= 0.85 of the right class and nothing
extra is shown. The ground truth only decides the next action; each action counts one (a polygon: one
per vertex), tool keys included. The browser time of each of these actions is bench/editor_latency.py's.

Prints actions per photo and per object kind (accepted as predicted, wrong class, boundary fix, missed
object, false positive, duplicates) and writes bench/results/editor_photos.json. The bar (issue 22):
at most half of the 28 actions the last browser round needed on a comparable photo.

    python -m bench.editor_photos
    python -m bench.editor_photos --images 15 --weights other.pth
    python -m bench.editor_photos --raw-masks   # the model's own masks, not snapped to the image's edges
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, format_table, write_json
from bench.editor_refine import DEFAULT_WEIGHTS, FRUITS, HELD_OUT
from bench.labeling.annotator import TARGET, Annotator, polygon_cost

BEFORE = 28  # actions per photo in the last browser round (issue 22's observation)


def label_photo(service, coco, coco_id: int) -> dict:
    """One photo: add it (the model segments it), make it right; its ImageLog as a dict + the polygon baseline."""
    info = coco.imgs[coco_id]
    image_id = service.images.add_files([FRUITS / "images" / info["file_name"]]).image_ids[0]
    ids = {c.name: c.id for c in service.ws.categories()}
    anns = coco.imgToAnns[coco_id]
    gts = [coco.annToMask(a).astype(bool) for a in anns]
    classes = [ids[coco.cats[a["category_id"]]["name"]] for a in anns]
    log = Annotator(service, classes[0]).label(image_id, info["file_name"], gts, classes)
    return {**log.to_dict(), "image_id": coco_id, "polygon_actions": sum(polygon_cost(g) for g in gts)}


def kinds(photos: list[dict]) -> list[dict]:
    """Per object kind: how many, and their actions (total, mean)."""
    spent = defaultdict(list)
    for photo in photos:
        for what, n in photo["steps"]:
            spent[what].append(n)
    return [{"kind": what, "count": len(ns), "actions": sum(ns), "mean": statistics.mean(ns)}
            for what, ns in sorted(spent.items(), key=lambda kv: -sum(kv[1]))]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, nargs="+", default=list(HELD_OUT), help="fruits_nuts image ids")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--raw-masks", action="store_true",
                        help="the app's --raw-masks: the model's own masks (default: snapped to the image's edges)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "editor_photos.json")
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights} does not exist")
    if not (FRUITS / "trainval.json").is_file():
        parser.error(f"{FRUITS / 'trainval.json'} does not exist (../shared/datasets/fruits_nuts)")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from pycocotools.coco import COCO

    from app.service import Service

    torch.set_num_threads(args.threads)
    coco = COCO(str(FRUITS / "trainval.json"))
    unknown = [i for i in args.images if i not in coco.imgs]
    if unknown:
        print(f"error: --images: no fruits_nuts image with id {unknown[0]}", file=sys.stderr)
        return 2
    photos = []
    with tempfile.TemporaryDirectory() as tmp:
        for coco_id in args.images:  # a fresh workspace per photo: no photo profits from another's edits
            service = Service.create(Path(tmp) / f"ws{coco_id}", args.weights, snap_edges=not args.raw_masks)
            try:
                photos.append(label_photo(service, coco, coco_id))
            finally:
                service.close()
            p = photos[-1]
            print(f"  photo {coco_id}: {p['objects']} objects, {p['actions']} actions, "
                  f"{'complete' if p['complete'] else 'INCOMPLETE'} ({p['machine_s']:.1f} s of service time)",
                  flush=True)
    rows = [{**p, "per_object": p["actions"] / max(p["objects"], 1)} for p in photos]
    print(format_table(rows, [("image", "image_id", "{}"), ("objects", "objects", "{}"), ("actions", "actions", "{}"),
                              ("actions/object", "per_object", "{:.2f}"), ("simulated s", "seconds", "{:.1f}"),
                              ("drawn as polygons", "polygon_actions", "{}"), ("complete", "complete", "{}")]))
    print()
    by_kind = kinds(photos)
    print(format_table(by_kind, [("object kind / step", "kind", "{}"), ("count", "count", "{}"),
                                 ("actions", "actions", "{}"), ("mean", "mean", "{:.1f}")]))
    mean = statistics.mean(p["actions"] for p in photos)
    print(f"\nmean {mean:.1f} actions per photo (before: {BEFORE}; bar: <= {BEFORE // 2}), "
          f"{'every photo complete' if all(p['complete'] for p in photos) else 'NOT every photo complete'}")
    write_json(args.output, {"benchmark": "editor_photos", "weights": str(args.weights), "threads": args.threads,
                             "snap_edges": not args.raw_masks,
                             "target_iou": TARGET, "photos": photos, "by_kind": by_kind,
                             "mean_actions_per_photo": mean, "before": BEFORE})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
