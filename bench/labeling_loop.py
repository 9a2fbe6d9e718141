"""Issue 26: labeling a dataset the model never saw, with CondInst in the loop, against drawing polygons.

A scripted annotator labels images one by one through the app's own service actions (the ones the
browser calls: refine clicks, polygon, brush / eraser strokes, select, Delete, class keys, resolve
overlaps, mark reviewed) until every ground-truth object has an instance at IoU >= 0.85 of the right
class and nothing extra is shown. The ground truth only decides the next action. Per object,
largest first:

  accept   a shown model instance at IoU >= 0.85 (select + class key when its class is wrong);
  refine   else click-to-refine (at most 4 clicks at the centre of the largest error region, as
           bench/editor_refine.py; on the best shown instance at IoU >= 0.4, else a new instance),
           stopping when a click gains < 0.02 or a first click gives < 0.5; accepted at >= 0.85;
           after two refine attempts ending in polygons the rest of the image is drawn directly;
  brush    a proposal at >= 0.6 is accepted and fixed with up to 3 brush / eraser strokes along the
           largest error region (a stroke that does not help is undone);
  polygon  else (Esc, or Delete the accepted attempt) a polygon from scratch: the object's outline
           simplified to <= 1 px (app.store.polygons), one action per vertex + Enter.
An object too small to reach 0.85 even drawn exactly (its <= 1 px outline filled as the app fills
polygons: objects under ~80 px) has that drawing's IoU as its target. Before the objects, the score
slider is moved when another threshold leaves clearly less work, and "resolve overlaps"
(app.annotate.overlaps) is used when it removes duplicates and no object's match; after them, every shown
instance matching no object is selected and deleted; then the image is marked reviewed. Actions are counted per kind; seconds from the per-action table in bench/labeling/costs.py.

Strategies (one run, same images):
  loop          file order; after every k images: retrain in the app's job (fine-tune the current model
                on the reviewed images, CPU, --iterations x --batch), switch to the new model, go on;
  no retrain    file order, the starting model throughout (its first k images are the loop's first
                round: same model, same images, so they are not labeled twice);
  uncertainty   like the loop, but each round takes the k images with the highest summed entropy of
                the current model's scores (model uncertainty; Label QA needs labels, these have none);
  polygons      every object drawn from scratch: outline vertices (<= 1 px) + class + confirm
                (as CVAT users work), also over the whole set.
Per round: actions per image / object and the held-out mask AP (kudzu val split, class "kudzu";
"agnostic": every prediction counted as kudzu) of the model in use.

    python -m bench.labeling_loop                    # kudzu; table + plot + JSON in bench/results/
    python -m bench.labeling_loop --images 4 --k 2   # smaller
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# ---- everything this script takes from the app (one block: the app's modules are being reorganised) ----
from app.view import View
from app.annotate.editing import polygon_window
from app.errors import AppError
from app.annotate.overlaps import overlap_items, resolve_overlaps
from app.store.polygons import export_polygons
from app.service import Service
# ----------------------------------------------------------------------------------------------------

import numpy as np

from bench.common import REPO, write_json
from bench.editor_refine import DEFAULT_WEIGHTS, iou, next_click
from bench.labeling.costs import ImageLog
from bench.labeling.geometry import entropy, ious, matches, stroke_along
from bench.labeling.report import print_tables, plot, summarize
from bench.labeling.rounds import HeldOut, retrain
from bench.labeling.via import coco_masks, via_to_coco

KUDZU = REPO.parent / "shared" / "datasets" / "kudzu"
TARGET = 0.85
MAX_CLICKS = 4
MIN_GAIN = 0.02
FIRST_CLICK_MIN = 0.5  # a first click on nothing that gives less: refine does not know this object
GIVE_UP = 2  # refine attempts ending in a polygon after which the rest of the image is drawn
BRUSH_FROM = 0.6
MAX_STROKES = 3
REFINE_FROM = 0.4
OVERLAP_IOU = 0.6


def polygon_vertices(mask: np.ndarray) -> list[np.ndarray]:
    """The polygons a person clicks for a mask: its outline simplified to <= 1 px, as (N, 2) arrays."""
    return [np.asarray(p).reshape(-1, 2) for p in export_polygons(mask)]


def drawable(mask: np.ndarray) -> float:
    """The IoU an exact drawing of the object reaches: its <= 1 px outline filled as the app fills polygons.
    Tiny objects (< ~80 px) stay below 0.85 however they are drawn; for them this is the target."""
    drawn = np.zeros_like(mask)
    for points in polygon_vertices(mask):
        window = polygon_window(points, mask.shape)
        if window is not None:
            drawn |= window.full(mask.shape)
    return iou(mask, drawn)


def polygon_cost(mask: np.ndarray) -> int:
    """Drawing one object from scratch as CVAT users do: vertices + class + confirm."""
    return sum(len(p) for p in polygon_vertices(mask)) + 2


class Annotator:
    """The scripted annotator of one workspace (see the module docstring)."""

    def __init__(self, service: Service, category_id: int):
        self.svc, self.category = service, category_id

    def call(self, log: ImageLog, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log.machine_s += time.perf_counter() - start

    def shown(self, view: View) -> list:
        return self.svc.actions.visible(view)

    def label(self, image_id: int, name: str, gts: list[np.ndarray]) -> ImageLog:
        log, svc = ImageLog(name=name, objects=len(gts)), self.svc
        view = View(image_id=image_id, picture=False)
        self.tool = None
        self.class_chosen = False
        self.failures = 0  # refine attempts that ended in a polygon, on this image
        self.targets = np.array([min(TARGET, drawable(g) - 1e-6) for g in gts])
        view = self.choose_threshold(view, gts, log)
        self.resolve(view, gts, log)
        done = matches(ious(gts, self.shown(view)), self.targets)
        claimed = {self.shown(view)[i].id for i in done.values()}
        for g in sorted(set(range(len(gts))) - set(done), key=lambda g: -int(gts[g].sum())):
            inst_id = self.one_object(view, gts[g], float(self.targets[g]), claimed, log)
            claimed.add(inst_id)
        for inst in self.shown(view):  # class keys on accepted model instances of another class
            if inst.id in claimed and inst.category_id != self.category:
                view = self.call(log, svc.actions.select, view, inst.id)
                self.call(log, svc.actions.set_category, view, self.category)
                log.add("select"); log.add("key"); log.outcomes["class_key"] += 1
        for inst in self.shown(view):  # extras: select + Delete
            if inst.id not in claimed:
                view = self.call(log, svc.actions.select, view, inst.id)
                self.call(log, svc.actions.delete_selected, view)
                log.add("select"); log.add("key"); log.outcomes["extra_deleted"] += 1
        final = self.shown(view)
        found = matches(ious(gts, final), self.targets)
        log.outcomes["below_0.85_drawable"] = int((self.targets < TARGET).sum())
        log.complete = (len(found) == len(gts) == len(final)
                        and all(final[i].category_id == self.category for i in found.values()))
        self.call(log, svc.actions.set_reviewed, view, True)
        log.add("review")
        return log

    def choose_threshold(self, view: View, gts, log: ImageLog) -> View:
        """Move the score slider (one action) when another threshold leaves clearly less work: an extra
        costs select + Delete, an object without a good instance ~4 (refine) or ~8 (polygon) actions."""
        live = self.svc.ws.instances(view.image_id)
        table = ious(gts, live)
        best_iou = table.max(axis=0) if len(gts) else np.zeros(len(live))

        def cost(t: float) -> float:
            cols = [k for k, inst in enumerate(live) if inst.shown_at(t)]
            sub = table[:, cols]
            done = matches(sub, self.targets)
            extras = sum(best_iou[k] < REFINE_FROM for k in cols)
            rest = [g for g in range(len(gts)) if g not in done]
            return 2 * extras + sum(4 if sub.shape[1] and sub[g].max() >= REFINE_FROM else 8 for g in rest)

        scores = sorted({round(float(i.score), 4) for i in live if i.score is not None} | {1.01})
        current = cost(view.threshold)
        best = min(scores, key=cost)
        if cost(best) + 1 < current:
            view = self.svc.actions.set_threshold(view, min(best, 1.0))
            log.add("slider")
            log.outcomes["threshold"] = round(view.threshold, 3)
        return view

    def resolve(self, view: View, gts, log: ImageLog) -> None:
        """One "resolve overlaps" action when it removes duplicates without losing any object's match."""
        shown = self.shown(view)
        removals = resolve_overlaps(overlap_items(shown), OVERLAP_IOU)
        if not removals:
            return
        gone = {r.remove for r in removals}
        kept = [inst for inst in shown if inst.id not in gone]
        if len(matches(ious(gts, kept), self.targets)) < len(matches(ious(gts, shown), self.targets)):
            return
        self.call(log, self.svc.actions.resolve_overlaps, view, OVERLAP_IOU)  # the app's action (key d)
        log.add("key")
        log.outcomes["overlaps_removed"] += len(removals)

    def use_tool(self, tool: str, log: ImageLog) -> None:
        if self.tool != tool:
            self.tool = tool
            log.add("key")

    def choose_class(self, log: ImageLog) -> None:
        """The class the refine / polygon tools give new instances: chosen once per image."""
        if not self.class_chosen:
            self.class_chosen = True
            log.add("key")

    def one_object(self, view: View, gt: np.ndarray, goal: float, claimed: set, log: ImageLog) -> int:
        """Make one object right (IoU >= goal); the id of its instance."""
        svc = self.svc
        if self.failures >= GIVE_UP:  # refine failed twice on this image: draw the rest
            return self.polygon(view, gt, log)
        shown = [inst for inst in self.shown(view) if inst.id not in claimed]
        row = ious([gt], shown)[0] if shown else np.zeros(0)
        target = shown[int(np.argmax(row))] if len(row) and row.max() >= REFINE_FROM else None
        if target is not None:
            self.use_tool("select", log)
            view = self.call(log, svc.actions.select, view, target.id)
            log.add("select")
            current = target.mask
        else:
            view = self.call(log, svc.actions.select, view, None)
            self.choose_class(log)
            current = np.zeros_like(gt)
        self.use_tool("refine", log)
        positive, negative, best = [], [], iou(gt, current)
        for _ in range(MAX_CLICKS):
            click = next_click(gt, current)
            if click is None:
                break
            (positive if click[2] else negative).append(list(click[:2]))
            log.add("refine_click")
            try:
                view, _ = self.call(log, svc.refiner.refine, view, json.dumps(positive), json.dumps(negative),
                                    self.category)
            except AppError:  # e.g. the clicks select nothing: the proposal stays as it was
                break
            current = view.refine.mask
            value = iou(gt, current)
            if value >= goal or value < best + MIN_GAIN or (len(positive) + len(negative) == 1
                                                             and value < FIRST_CLICK_MIN):
                best = max(best, value)
                break
            best = value
        value = iou(gt, current) if view.refine is not None else 0.0
        if view.refine is not None and value >= BRUSH_FROM:
            view, _ = self.call(log, svc.refiner.accept, view)
            log.add("key")
            if value >= goal:
                log.outcomes["refined"] += 1
                return view.selected
            value = self.brush(view, gt, goal, log)
            if value >= goal:
                log.outcomes["brushed"] += 1
                return view.selected
            view, _ = self.call(log, svc.actions.delete_selected, view)
            log.add("key")
        elif view.refine is not None:
            view, _ = self.call(log, svc.refiner.discard, view)
            log.add("key")
        self.failures += 1
        return self.polygon(view, gt, log)

    def brush(self, view: View, gt: np.ndarray, goal: float, log: ImageLog) -> float:
        """Up to MAX_STROKES brush / eraser drags on the selected instance; its IoU after them."""
        svc = self.svc
        mask = svc.actions.selected_instance(view).mask
        value = iou(gt, mask)
        ys, xs = np.nonzero(gt)
        centre = (float(xs.mean()), float(ys.mean()))
        for _ in range(MAX_STROKES):
            missed, extra = gt & ~mask, mask & ~gt
            tool, region = ("brush", missed) if missed.sum() >= extra.sum() else ("erase", extra)
            stroke = stroke_along(region, centre)
            if stroke is None:
                break
            self.use_tool(tool, log)
            after, _ = self.call(log, svc.edits.stroke, view, tool, json.dumps(stroke[0]), stroke[1])
            log.add("stroke")
            inst = svc.actions.selected_instance(after)
            new = iou(gt, inst.mask) if inst is not None else 0.0
            if new <= value:
                self.call(log, svc.actions.undo, view)
                log.add("key")
                break
            view, mask, value = after, inst.mask, new
            if value >= goal:
                break
        return value

    def polygon(self, view: View, gt: np.ndarray, log: ImageLog) -> int:
        svc = self.svc
        view = self.call(log, svc.actions.select, view, None)
        self.choose_class(log)
        self.use_tool("polygon", log)
        new_id = None
        for k, points in enumerate(polygon_vertices(gt)):
            view = view if new_id is None else svc.actions.select(view, new_id)
            view, _ = self.call(log, svc.edits.polygon, view, json.dumps(points.tolist()),
                                "new" if new_id is None else "add", self.category)
            new_id = view.selected
            log.add("vertex", len(points))
            log.add("key")
        log.outcomes["polygon"] += 1
        return new_id


# ---- strategies --------------------------------------------------------------------------------------

def run_strategy(name: str, args, pool: list[dict], masks: dict, held_out: HeldOut, workdir: Path,
                 retraining: bool, order: str, skip: int = 0) -> dict:
    """Label `pool` (COCO image entries) with one strategy; per-image logs and per-round rows."""
    service = Service.create(workdir / name, args.weights)
    try:
        service.actions.add_class("kudzu")
        category = next(c.id for c in service.ws.categories() if c.name == "kudzu")
        annotator = Annotator(service, category)
        paths = {image["id"]: args.dataset / "train" / image["file_name"] for image in pool}
        ids: dict[int, int] = {}
        if order == "uncertainty":  # every image is in the workspace, segmented by the model in use
            ids = dict(zip(paths, service.images.add_files(list(paths.values())).image_ids))
        remaining = [image["id"] for image in pool][skip:]
        rounds, logs = [], []
        while remaining:
            if order == "uncertainty":
                score = {g: entropy(i.score for i in service.ws.instances(ids[g])) for g in remaining}
                batch = sorted(remaining, key=lambda g: -score[g])[:args.k]
            else:
                batch = remaining[:args.k]
            remaining = [g for g in remaining if g not in batch]
            row = {"round": len(rounds), "model": service.session.name, **held_out.ap(service), "images": []}
            print(f"  {name} round {row['round']}: held-out mask AP kudzu {100 * row['ap']:.1f}, "
                  f"class-agnostic {100 * row['ap_agnostic']:.1f}", flush=True)
            for g in batch:
                if g not in ids:
                    ids[g] = service.images.add_files([paths[g]]).image_ids[0]
                log = annotator.label(ids[g], paths[g].name, masks[g])
                logs.append(log.to_dict())
                row["images"].append(log.to_dict())
                print(f"  {name} round {row['round']} {paths[g].name}: {log.objects} objects, {log.total} actions"
                      f" {dict(log.outcomes)}{'' if log.complete else ' INCOMPLETE'} ({log.machine_s:.0f} s)",
                      flush=True)
            if retraining and remaining:
                row["retrain"] = retrain(service, args.iterations, args.batch)
                print(f"  {name} retrain: {row['retrain']['state']} {row['retrain']['wall_s']} s wall, "
                      f"{row['retrain']['cpu_s']} s CPU", flush=True)
                if order == "uncertainty" and row["retrain"]["state"] == "done":
                    service.images.segment([ids[g] for g in remaining])
            rounds.append(row)
        return {"strategy": name, "rounds": rounds, "images": logs}
    finally:
        service.close()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=KUDZU, help="a VIA dataset with train/ and val/")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=12, help="images of train/ to label (file order)")
    parser.add_argument("--max-objects", type=int, default=40,
                        help="skip train images with more objects (a compute cap of this machine)")
    parser.add_argument("--k", type=int, default=4, help="images per round")
    parser.add_argument("--iterations", type=int, default=60, help="fine-tuning iterations per retrain")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=8, help="held-out val/ images for the mask AP")
    parser.add_argument("--strategies", default="loop,no_retrain,uncertainty")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "labeling_loop.json")
    parser.add_argument("--from-json", type=Path, help="only re-render the tables, summary and plot of a result JSON")
    args = parser.parse_args(argv)
    if args.from_json:
        return args
    for name in ("images", "k", "iterations", "batch", "val_images", "threads", "max_objects"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    unknown = set(args.strategies.split(",")) - {"loop", "no_retrain", "uncertainty"}
    if unknown:
        parser.error(f"unknown strategies: {', '.join(sorted(unknown))}")
    for split in ("train", "val"):
        if not (args.dataset / split / "via_region_data.json").is_file():
            parser.error(f"{args.dataset / split} has no via_region_data.json")
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights} does not exist")
    return args


def rerender(path: Path) -> int:
    """Tables, summary and plot again from a result JSON (e.g. after the report's format changed)."""
    payload = json.loads(path.read_text())
    payload["summary"] = summarize(payload["runs"])
    print_tables(payload["runs"], payload["summary"], payload["polygons_whole_set"])
    plot(payload["runs"], path.with_suffix(".png"), payload["k"])
    write_json(path, payload)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender(args.from_json)
    import torch

    torch.set_num_threads(args.threads)
    train, problems = via_to_coco(args.dataset / "train" / "via_region_data.json", args.dataset / "train", "kudzu")
    val, more = via_to_coco(args.dataset / "val" / "via_region_data.json", args.dataset / "val", "kudzu")
    for line in problems + more:
        print("skipped:", line)
    masks = coco_masks(train)
    counts = {i["id"]: len(masks[i["id"]]) for i in train["images"]}
    pool = [i for i in train["images"] if counts[i["id"]] <= args.max_objects][:args.images]
    val_masks = coco_masks(val)
    whole = {"train": sum(polygon_cost(m) for ms in masks.values() for m in ms),
             "train_objects": sum(counts.values()),
             "val": sum(polygon_cost(m) for ms in val_masks.values() for m in ms),
             "val_objects": sum(len(v) for v in val_masks.values())}
    val = {**val, "images": val["images"][:args.val_images]}
    val["annotations"] = [a for a in val["annotations"] if a["image_id"] in {i["id"] for i in val["images"]}]
    held_out = HeldOut(val, args.dataset / "val")
    polygons = {"strategy": "polygons", "images": []}
    for image in pool:
        log = ImageLog(name=image["file_name"], objects=counts[image["id"]], complete=True)
        for m in masks[image["id"]]:
            log.add("vertex", polygon_cost(m) - 2)
            log.add("key", 2)
        polygons["images"].append(log.to_dict())
    print(f"pool: {len(pool)} images, {sum(counts[i['id']] for i in pool)} objects; held out: "
          f"{len(val['images'])} val images", flush=True)
    runs, start = [polygons], time.perf_counter()
    wanted = args.strategies.split(",")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    png = args.output.with_suffix(".png")

    def report(final: bool) -> None:  # after every strategy: a stopped run keeps what it measured
        summary = summarize(runs)
        if final:
            print_tables(runs, summary, whole)
        plot(runs, png, args.k)
        write_json(args.output, {"benchmark": "labeling_loop", "dataset": args.dataset.name,
                                 "pool": [i["file_name"] for i in pool], "k": args.k, "iterations": args.iterations,
                                 "batch": args.batch, "threads": args.threads, "target_iou": TARGET,
                                 "held_out_images": [i["file_name"] for i in val["images"]], "summary": summary,
                                 "polygons_whole_set": whole, "runs": runs, "complete_run": final,
                                 "seconds": round(time.perf_counter() - start, 1)})

    workdir = Path(tempfile.mkdtemp(prefix="labeling_loop_"))
    try:
        loop = None
        if "loop" in wanted:
            loop = run_strategy("loop", args, pool, masks, held_out, workdir, True, "file")
            runs.append(loop)
            report(False)
        if "no_retrain" in wanted:
            skip = args.k if loop else 0  # the loop's first round is this strategy's first round
            rest = run_strategy("no_retrain", args, pool, masks, held_out, workdir, False, "file", skip)
            if loop:
                first = loop["rounds"][0]
                rest["rounds"] = [{k: v for k, v in first.items() if k != "retrain"}] + [
                    dict(r, round=r["round"] + 1) for r in rest["rounds"]]
                rest["images"] = first["images"] + rest["images"]
            runs.append(rest)
            report(False)
        if "uncertainty" in wanted:
            runs.append(run_strategy("uncertainty", args, pool, masks, held_out, workdir, True, "uncertainty"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(True)
    print(f"\nwrote {args.output} and {png} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
