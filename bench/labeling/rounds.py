"""Between rounds: the app's retrain job + model switch, and the held-out mask AP of the model in use.

Both take the app's `Service` as an argument (nothing here imports the app).
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from bench.labeling.via import load_coco


def retrain(service, iterations: int, batch: int) -> dict:
    """The app's retrain job on the reviewed images, then switch to its checkpoint; wall and CPU seconds."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    message = service.start_retrain(iterations, batch, reviewed_only=True)
    status = service.jobs.wait(3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = {"message": message, "state": status.state, "wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            "iterations": iterations, "batch": batch}
    if status.state != "done":
        info["error"] = status.message
        return info
    service.use_retrained()
    info["checkpoint"] = str(service.session.weights)
    return info


class HeldOut:
    """Mask AP of the model in use on held-out images (cached by checkpoint): "ap" over the dataset's classes
    (a prediction counts for the class of its name), "ap_agnostic" with every class as one."""

    def __init__(self, coco: dict, images_dir: Path):
        self.coco, self.images_dir, self.cache = coco, images_dir, {}
        self.gt = load_coco(coco)
        self.ids = {c["name"]: c["id"] for c in coco["categories"]}
        one = {**coco, "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
               "annotations": [{**a, "category_id": 1} for a in coco["annotations"]]}
        self.gt_agnostic = load_coco(one)

    def ap(self, service) -> dict:
        from PIL import Image

        from training.evaluation import evaluate_results

        key = str(service.session.weights)
        if key in self.cache:
            return self.cache[key]
        session, named, agnostic = service.session, [], []
        for image in self.coco["images"]:
            rgb = np.asarray(Image.open(self.images_dir / image["file_name"]).convert("RGB"))
            with session.lock:
                result = session.predictor(rgb)[0]
            masks = result.instance_masks
            for k in range(len(result)):
                entry = {"image_id": image["id"], "category_id": 1, "segmentation": masks.rle(k),
                         "score": float(result.scores[k])}
                agnostic.append(entry)
                category = self.ids.get(session.class_name(int(result.classes[k])))
                if category is not None:
                    named.append({**entry, "category_id": category})
        out = {}
        for name, gt, results in (("ap", self.gt, named), ("ap_agnostic", self.gt_agnostic, agnostic)):
            out[name] = (evaluate_results(gt, results, iou_types=("segm",))[0]["segm"]["AP"] if results else 0.0)
        self.cache[key] = out
        return out
