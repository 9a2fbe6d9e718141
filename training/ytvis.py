"""YouTube-VIS annotations as a per-frame training set: every listed frame of every video is an image.

`CocoInstances` calls `ytvis_to_coco` when the annotation file has `videos` instead of `images`, so
`condinst train --train-ann ytvis_train.json --train-images JPEGImages/` trains the per-frame model on a
YouTube-VIS dataset with no conversion step. The file is checked by condinst.video.ytvis (ids, one
segmentation per frame, mask sizes); an object's non-null frames become COCO annotations (compressed
RLE, its `bboxes`/`areas` entry or the mask's own), frames without objects images without annotations
(the train loader skips them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from condinst.video.ytvis import is_ytvis, load_dataset

__all__ = ["is_ytvis", "ytvis_to_coco"]


def ytvis_to_coco(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A parsed YouTube-VIS dataset -> a COCO instances dict (image ids 1..N in video and frame order)."""
    from pycocotools import mask as mask_utils

    dataset = load_dataset(path, data)  # YtvisError (a UserError) on a bad file: training.data says it as a DatasetError
    images, annotations, image_id = [], [], {}
    for video in dataset.videos:
        for t, name in enumerate(video["file_names"]):
            image_id[video["id"], t] = len(images) + 1
            images.append({"id": len(images) + 1, "file_name": name, "height": video["height"],
                           "width": video["width"], "video_id": video["id"], "frame_index": t})
    for a in dataset.annotations:
        boxes, areas = a.get("bboxes") or [], a.get("areas") or []
        for t, rle in enumerate(a["segmentations"]):
            if rle is None:
                continue
            box = boxes[t] if t < len(boxes) and boxes[t] is not None else mask_utils.toBbox(rle).tolist()
            area = areas[t] if t < len(areas) and areas[t] is not None else float(mask_utils.area(rle))
            counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id[a["video_id"], t],
                                "category_id": a["category_id"], "iscrowd": int(a.get("iscrowd", 0)),
                                "segmentation": {"size": list(rle["size"]), "counts": counts},
                                "bbox": [float(v) for v in box], "area": float(area),
                                "track_id": a["id"]})
    return {"info": dict(data.get("info") or {}, converted_from="YouTube-VIS"), "licenses": [],
            "categories": dataset.categories, "images": images, "annotations": annotations}
