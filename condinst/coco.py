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


def encode_rle(mask) -> dict:
    """(H, W) bool mask -> COCO compressed RLE {"size": [H, W], "counts": str}."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def result_to_coco(result, file_name: str, class_names, category_ids, image_id=None,
                   min_score: float = 0.0) -> list[dict]:
    """One image's `ImageResult` -> COCO results entries (bbox xywh, score, RLE segmentation)."""
    entries = []
    boxes, scores, classes = result.boxes.tolist(), result.scores.tolist(), result.classes.tolist()
    for k, (box, score, c) in enumerate(zip(boxes, scores, classes)):
        if score < min_score:
            continue
        x1, y1, x2, y2 = box
        entry = {"file_name": file_name, "category_id": int(category_ids[c]), "category_name": class_names[c],
                 "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                 "score": round(float(score), 6), "segmentation": encode_rle(result.masks[k].cpu().numpy())}
        if image_id is not None:
            entry = {"image_id": image_id, **entry}
        entries.append(entry)
    return entries
