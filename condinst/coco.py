"""The 80 COCO thing categories: contiguous index i <-> official category id and name."""

COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17,
    18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36,
    37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73,
    74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus",
    "train", "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def encode_masks(masks) -> list[dict]:
    """(K, H, W) bool masks (numpy or torch) -> K compressed RLEs {"size": [H, W], "counts": str}."""
    import numpy as np
    import torch

    from .postprocess import InstanceMasks

    if not hasattr(masks, "detach"):
        masks = torch.from_numpy(np.asarray(masks, dtype=bool))
    instances = InstanceMasks.from_dense(masks.detach().cpu())
    return [instances.rle(k) for k in range(len(instances))]


def result_to_coco(result, category_ids, image_id=None, file_name: str | None = None, class_names=None,
                   min_score: float = 0.0, decimals: int | None = None) -> list[dict]:
    """One image's `ImageResult` -> COCO results entries (bbox xywh, score, RLE segmentation).

    Each RLE is encoded from the instance's crop (`InstanceMasks.rle`): no full-size mask stack.

    Contiguous classes map to `category_ids`; `image_id`, `file_name` and `category_name` (from
    `class_names`) are added when given; `decimals` rounds bbox (and score to twice as many digits).
    """
    keep = [k for k, s in enumerate(result.scores.tolist()) if s >= min_score]
    if not keep:
        return []
    boxes = result.boxes.detach().float().cpu()[keep].tolist()
    scores = result.scores.detach().float().cpu()[keep].tolist()
    classes = result.classes.detach().cpu()[keep].tolist()
    rles = [result.instance_masks.rle(k) for k in keep]
    entries = []
    for (x1, y1, x2, y2), score, c, rle in zip(boxes, scores, classes, rles):
        bbox = [x1, y1, x2 - x1, y2 - y1]
        if decimals is not None:
            bbox, score = [round(v, decimals) for v in bbox], round(score, 2 * decimals)
        entry = {} if image_id is None else {"image_id": int(image_id)}
        if file_name is not None:
            entry["file_name"] = file_name
        entry["category_id"] = int(category_ids[int(c)])
        if class_names is not None:
            entry["category_name"] = class_names[int(c)]
        entry.update(bbox=bbox, score=float(score), segmentation=rle)
        entries.append(entry)
    return entries
