"""The scripted annotator: makes every ground-truth object of one image right through the app's own actions.

Used by bench/labeling_loop.py (a new dataset, CondInst in the loop) and bench/editor_photos.py (the bundled
model's held-out photos); the policy is described in bench/labeling_loop.py's docstring. Each object carries its
class: new instances are given it (a class key when it differs from the last one chosen), accepted model
instances of another class get a class key.
"""
from __future__ import annotations

import json
import time

import numpy as np

from app.annotate.editing import polygon_window
from app.annotate.overlaps import overlap_items, resolve_overlaps
from app.errors import AppError
from app.store.polygons import export_polygons
from app.view import View
from bench.editor_refine import iou, next_click
from bench.labeling.costs import ImageLog
from bench.labeling.geometry import ious, matches, stroke_along

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

    def __init__(self, service, category_id: int):
        """`service`: an app.service.Service; `category_id`: the class of every object unless `label` is told."""
        self.svc, self.default, self.category = service, category_id, category_id

    def call(self, log: ImageLog, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log.machine_s += time.perf_counter() - start

    def shown(self, view: View) -> list:
        return self.svc.actions.visible(view)

    def label(self, image_id: int, name: str, gts: list[np.ndarray], classes: list[int] | None = None) -> ImageLog:
        """Make image `image_id` right: `gts` (H, W) bool masks, `classes` their class ids (default: one class)."""
        classes = list(classes) if classes is not None else [self.default] * len(gts)
        log, svc = ImageLog(name=name, objects=len(gts)), self.svc
        view = View(image_id=image_id, picture=False)
        self.tool = "select"  # the editor opens on Select
        self.chosen = None  # the class new instances get (a class key when an object needs another)
        self.failures = 0  # refine attempts that ended in a polygon, on this image
        self.targets = np.array([min(TARGET, drawable(g) - 1e-6) for g in gts])
        since = log.total
        view = self.choose_threshold(view, gts, log)
        log.step("score threshold", since)
        since = log.total
        self.resolve(view, gts, log)
        log.step("duplicates (resolve overlaps)", since)
        done = matches(ious(gts, self.shown(view)), self.targets)
        log.outcomes["accepted"] = len(done)
        for _ in done:
            log.step("accepted as predicted", log.total)
        claimed = {self.shown(view)[i].id: classes[g] for g, i in done.items()}  # instance id -> its class
        for g in sorted(set(range(len(gts))) - set(done), key=lambda g: -int(gts[g].sum())):
            self.category = classes[g]
            since, before = log.total, dict(log.outcomes)
            inst_id = self.one_object(view, gts[g], float(self.targets[g]), claimed, log)
            claimed[inst_id] = classes[g]
            how = next(k for k in ("refined", "brushed", "polygon") if log.outcomes[k] > before.get(k, 0))
            log.step(f"{self.started_from} ({how})", since)
        for inst in self.shown(view):  # class keys on accepted model instances of another class
            if inst.id in claimed and inst.category_id != claimed[inst.id]:
                since = log.total
                view = self.call(log, svc.actions.select, view, inst.id)
                self.call(log, svc.actions.set_category, view, claimed[inst.id])
                log.add("select"); log.add("key"); log.outcomes["class_key"] += 1
                log.step("wrong class", since)
        for inst in self.shown(view):  # extras: select + Delete
            if inst.id not in claimed:
                since = log.total
                if view.selected is not None:  # else Delete takes the instance under the pointer: no click
                    log.add("select")
                view = self.call(log, svc.actions.select, view, inst.id)
                view, _ = self.call(log, svc.actions.delete_selected, view)
                log.add("key"); log.outcomes["extra_deleted"] += 1
                log.step("false positive", since)
        final = self.shown(view)
        found = matches(ious(gts, final), self.targets)
        log.outcomes["below_0.85_drawable"] = int((self.targets < TARGET).sum())
        log.complete = (len(found) == len(gts) == len(final)
                        and all(final[i].category_id == classes[g] for g, i in found.items()))
        since = log.total
        self.call(log, svc.actions.set_reviewed, view, True)
        log.add("review")
        log.step("mark reviewed", since)
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
        """The class the refine / polygon tools give new instances: a class key when it is not the one chosen last."""
        if self.chosen != self.category:
            self.chosen = self.category
            log.add("key")

    def one_object(self, view: View, gt: np.ndarray, goal: float, claimed: dict, log: ImageLog) -> int:
        """Make one object right (IoU >= goal); the id of its instance."""
        svc = self.svc
        self.started_from = "missed object"
        if self.failures >= GIVE_UP:  # refine failed twice on this image: draw the rest
            return self.polygon(view, gt, log)
        shown = [inst for inst in self.shown(view) if inst.id not in claimed]
        row = ious([gt], shown)[0] if shown else np.zeros(0)
        target = shown[int(np.argmax(row))] if len(row) and row.max() >= REFINE_FROM else None
        if target is not None:
            self.started_from = "boundary fix"
            if self.tool == "polygon":  # there a click adds a vertex; with any other tool it selects the instance
                self.use_tool("select", log)
            view = self.call(log, svc.actions.select, view, target.id)
            log.add("select")
            current = target.mask
        else:
            first = next_click(gt, np.zeros_like(gt))
            if view.selected is not None or (first is not None and svc.actions.instances_at(view, first[0], first[1])):
                log.add("key")  # Esc: else the first refine click would refine (or select) an instance
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
