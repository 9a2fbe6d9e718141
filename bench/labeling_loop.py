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

Datasets (bench/labeling/datasets.py): a VIA folder (kudzu: train/ + val/, one class; the start model is
the bundled fruits model) or a COCO one (fruits_nuts: its trainval.json, per-object classes; the start
model is trained here from scratch on --start-images, bench/labeling/start_model.py, cached under runs/;
the images to label are the others but --held-out, whose mask AP over the dataset's classes is reported).

    python -m bench.labeling_loop                    # kudzu; table + plot + JSON in bench/results/
    python -m bench.labeling_loop --images 4 --k 2   # smaller
    python -m bench.labeling_loop --dataset ../shared/datasets/fruits_nuts --strategies loop,no_retrain \
        --output bench/results/labeling_loop_fruits.json   # 3-image start model, 12 images to label
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

from app.service import Service
from bench.common import REPO, write_json
from bench.editor_refine import DEFAULT_WEIGHTS
from bench.labeling.annotator import TARGET, Annotator, polygon_cost
from bench.labeling.costs import ImageLog
from bench.labeling.datasets import NOT_A_DATASET, LabelingSet, coco_file, is_via, load_dataset
from bench.labeling.geometry import entropy
from bench.labeling.report import print_tables, plot, summarize
from bench.labeling.rounds import HeldOut, retrain
from bench.labeling.start_model import start_model

KUDZU = REPO.parent / "shared" / "datasets" / "kudzu"


# ---- strategies --------------------------------------------------------------------------------------

def run_strategy(name: str, args, data: LabelingSet, held_out: HeldOut, workdir: Path,
                 retraining: bool, order: str, skip: int = 0) -> dict:
    """Label `data.pool` (COCO image entries) with one strategy; per-image logs and per-round rows."""
    pool, masks = data.pool, data.masks
    service = Service.create(workdir / name, args.weights)
    try:
        have = {c.name for c in service.ws.categories()}
        for class_name in data.class_names:  # the model's classes keep their ids; new ones are added
            if class_name not in have:
                service.actions.add_class(class_name)
        ids_of = {c.name: c.id for c in service.ws.categories()}
        annotator = Annotator(service, ids_of[data.class_names[0]])
        paths = {image["id"]: data.images_dir / image["file_name"] for image in pool}
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
            print(f"  {name} round {row['round']}: held-out mask AP {100 * row['ap']:.1f}, "
                  f"class-agnostic {100 * row['ap_agnostic']:.1f}", flush=True)
            for g in batch:
                if g not in ids:
                    ids[g] = service.images.add_files([paths[g]]).image_ids[0]
                log = annotator.label(ids[g], paths[g].name, masks[g], [ids_of[c] for c in data.classes[g]])
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
    parser.add_argument("--dataset", type=Path, default=KUDZU,
                        help="a VIA dataset with train/ and val/, or a COCO one with trainval.json")
    parser.add_argument("--weights", type=Path, help="the start model (default: the bundled one for VIA, "
                        "one trained on --start-images for COCO)")
    parser.add_argument("--images", type=int, default=12, help="images of train/ to label (file order)")
    parser.add_argument("--max-objects", type=int, default=40,
                        help="skip train images with more objects (a compute cap of this machine)")
    parser.add_argument("--k", type=int, default=4, help="images per round")
    parser.add_argument("--iterations", type=int, default=60, help="fine-tuning iterations per retrain")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=8, help="held-out val/ images for the mask AP (VIA)")
    parser.add_argument("--start-images", type=int, nargs="+", default=[0, 1, 2],
                        help="COCO: image ids the start model is trained on (not labeled)")
    parser.add_argument("--held-out", type=int, nargs="+", default=[15, 16, 17],
                        help="COCO: image ids of the held-out mask AP (not labeled)")
    parser.add_argument("--start-iterations", type=int, default=300, help="COCO: start model iterations")
    parser.add_argument("--start-batch", type=int, default=2, help="COCO: start model images per iteration")
    parser.add_argument("--strategies", default="loop,no_retrain,uncertainty")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "labeling_loop.json")
    parser.add_argument("--from-json", type=Path, help="only re-render the tables, summary and plot of a result JSON")
    args = parser.parse_args(argv)
    if args.from_json:
        return args
    for name in ("images", "k", "iterations", "batch", "val_images", "threads", "max_objects", "start_iterations",
                 "start_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    unknown = set(args.strategies.split(",")) - {"loop", "no_retrain", "uncertainty"}
    if unknown:
        parser.error(f"unknown strategies: {', '.join(sorted(unknown))}")
    if not is_via(args.dataset) and coco_file(args.dataset) is None:
        parser.error(f"{args.dataset}: {NOT_A_DATASET}")
    if is_via(args.dataset) and args.weights is None:
        args.weights = DEFAULT_WEIGHTS
    if set(args.start_images) & set(args.held_out):
        parser.error("--start-images and --held-out share an image")
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights} does not exist")
    return args


def rerender(path: Path) -> int:
    """Tables, summary and plot again from a result JSON (e.g. after the report's format changed)."""
    payload = json.loads(path.read_text())
    payload["summary"] = summarize(payload["runs"])
    print_tables(payload["runs"], payload["summary"], payload["polygons_whole_set"])
    plot(payload["runs"], path.with_suffix(".png"), payload["k"], payload.get("dataset", "kudzu"))
    write_json(path, payload)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender(args.from_json)
    import torch

    torch.set_num_threads(args.threads)
    try:
        data = load_dataset(args.dataset, args.images, args.max_objects, args.val_images, tuple(args.start_images),
                            tuple(args.held_out))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in data.problems:
        print("skipped:", line)
    start_info = None
    if args.weights is None:  # COCO without --weights: the start model of --start-images
        args.weights, start_info = start_model(coco_file(args.dataset), data.images_dir, tuple(args.start_images),
                                               args.start_iterations, args.start_batch, args.threads)
        print(f"start model: {args.weights} ({'cached' if start_info['cached'] else 'trained'}: "
              f"{start_info.get('wall_s', '?')} s wall, {start_info.get('cpu_s', '?')} s CPU)", flush=True)
    pool, masks, whole = data.pool, data.masks, data.whole
    held_out = HeldOut(data.held_out, data.held_out_dir)
    polygons = {"strategy": "polygons", "images": []}
    for image in pool:
        log = ImageLog(name=image["file_name"], objects=len(masks[image["id"]]), complete=True)
        for m in masks[image["id"]]:
            log.add("vertex", polygon_cost(m) - 2)
            log.add("key", 2)
        polygons["images"].append(log.to_dict())
    print(f"pool: {len(pool)} images, {sum(len(masks[i['id']]) for i in pool)} objects; held out: "
          f"{len(data.held_out['images'])} images", flush=True)
    runs, start = [polygons], time.perf_counter()
    wanted = args.strategies.split(",")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    png = args.output.with_suffix(".png")

    def report(final: bool) -> None:  # after every strategy: a stopped run keeps what it measured
        summary = summarize(runs)
        if final:
            print_tables(runs, summary, whole)
        plot(runs, png, args.k, data.name)
        write_json(args.output, {"benchmark": "labeling_loop", "dataset": data.name, "format": data.kind,
                                 "classes": data.class_names, "weights": str(args.weights), "start_model": start_info,
                                 **data.extra,
                                 "pool": [i["file_name"] for i in pool], "k": args.k, "iterations": args.iterations,
                                 "batch": args.batch, "threads": args.threads, "target_iou": TARGET,
                                 "held_out_images": [i["file_name"] for i in data.held_out["images"]],
                                 "summary": summary, "polygons_whole_set": whole, "runs": runs, "complete_run": final,
                                 "seconds": round(time.perf_counter() - start, 1)})

    workdir = Path(tempfile.mkdtemp(prefix="labeling_loop_"))
    try:
        loop = None
        if "loop" in wanted:
            loop = run_strategy("loop", args, data, held_out, workdir, True, "file")
            runs.append(loop)
            report(False)
        if "no_retrain" in wanted:
            skip = args.k if loop else 0  # the loop's first round is this strategy's first round
            rest = run_strategy("no_retrain", args, data, held_out, workdir, False, "file", skip)
            if loop:
                first = loop["rounds"][0]
                rest["rounds"] = [{k: v for k, v in first.items() if k != "retrain"}] + [
                    dict(r, round=r["round"] + 1) for r in rest["rounds"]]
                rest["images"] = first["images"] + rest["images"]
            runs.append(rest)
            report(False)
        if "uncertainty" in wanted:
            runs.append(run_strategy("uncertainty", args, data, held_out, workdir, True, "uncertainty"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(True)
    print(f"\nwrote {args.output} and {png} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
