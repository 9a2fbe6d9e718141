"""Small training data and configs for the training tests (importable: tests/ is on pytest's pythonpath)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from condinst.config import BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig, SolverConfig
from condinst.sipmask.config import SipMaskConfig

CATEGORIES = ({"id": 1, "name": "ellipse"}, {"id": 3, "name": "rectangle"})  # gap in the ids on purpose


def make_synthetic_coco(root: Path, num_images: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0,
                        shapes_per_image: tuple[int, int] = (1, 3), crowd: bool = False) -> tuple[Path, Path]:
    """Write `num_images` PNGs with reddish ellipses and bluish rectangles + a COCO JSON with polygons.

    Returns (annotation file, image folder). Shapes do not overlap, so every mask equals its polygon.
    """
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    images, annotations = [], []
    for i in range(num_images):
        canvas = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
        occupied = np.zeros((h, w), np.uint8)
        image_id = 100 + i
        for _ in range(int(rng.integers(shapes_per_image[0], shapes_per_image[1] + 1))):
            for _attempt in range(20):
                kind = int(rng.integers(0, 2))
                cx, cy = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
                a, b = int(rng.integers(10, 26)), int(rng.integers(10, 26))
                if kind == 0:
                    pts = cv2.ellipse2Poly((cx, cy), (a, b), int(rng.integers(0, 180)), 0, 360, 15)
                    colour = (int(rng.integers(180, 255)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
                else:
                    pts = np.array([[cx - a, cy - b], [cx + a, cy - b], [cx + a, cy + b], [cx - a, cy + b]])
                    colour = (int(rng.integers(0, 60)), int(rng.integers(0, 60)), int(rng.integers(180, 255)))
                pts = np.clip(pts, 0, [w - 1, h - 1]).astype(np.int32)
                mask = np.zeros((h, w), np.uint8)
                cv2.fillPoly(mask, [pts], 1)
                if (mask & cv2.dilate(occupied, np.ones((5, 5), np.uint8))).any():
                    continue
                occupied |= mask
                canvas[mask.astype(bool)] = colour
                x, y, bw, bh = cv2.boundingRect(pts)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": CATEGORIES[kind]["id"],
                                    "segmentation": [pts.reshape(-1).astype(float).tolist()],
                                    "bbox": [float(x), float(y), float(bw), float(bh)],
                                    "area": float(mask.sum()), "iscrowd": 0})
                break
        if crowd and i == 0:  # a crowd region in the corner of the first image
            rle = mask_util.encode(np.asfortranarray(np.pad(np.ones((12, 12), np.uint8), ((0, h - 12), (0, w - 12)))))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": rle, "bbox": [0.0, 0.0, 12.0, 12.0], "area": 144.0, "iscrowd": 1})
        name = f"img_{i:03d}.png"
        cv2.imwrite(str(image_dir / name), canvas[:, :, ::-1])
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(CATEGORIES)}))
    return ann_file, image_dir


def tiny_train_config(max_iter: int = 6, **solver) -> CondInstConfig:
    """A CondInst small enough to train on CPU in well under a second per iteration."""
    cfg = CondInstConfig(name="tiny")
    cfg.backbone = BackboneConfig(stem_out_channels=8, res2_out_channels=32, width_per_group=8)
    cfg.neck = NeckConfig(out_channels=32)
    cfg.mask_branch = MaskBranchConfig(channels=16)
    cfg.input.min_size_train, cfg.input.max_size_train = (128, 160), 256
    cfg.input.min_size_test, cfg.input.max_size_test = 128, 256
    defaults = dict(ims_per_batch=2, base_lr=0.01, max_iter=max_iter, steps=(4,), warmup_iters=2, checkpoint_period=3)
    cfg.solver = SolverConfig(**{**defaults, **solver})
    return cfg.validate()


def tiny_sipmask_config(max_iter: int = 2, **solver) -> SipMaskConfig:
    """A narrow SipMask (GN, 32-channel FPN, 1 class + 2 box convs) at 128 px that trains in seconds on CPU."""
    cfg = SipMaskConfig(name="tiny_sipmask")
    cfg.backbone = BackboneConfig(stem_out_channels=8, res2_out_channels=32, width_per_group=8, norm="GN", freeze_at=0)
    cfg.neck = NeckConfig(out_channels=32)
    cfg.fcos.num_convs = 2
    cfg.input.min_size_train, cfg.input.max_size_train = (128,), 256
    cfg.input.min_size_test, cfg.input.max_size_test = 128, 256
    defaults = dict(ims_per_batch=2, base_lr=0.01, max_iter=max_iter, steps=(max_iter,), warmup_iters=2,
                    checkpoint_period=10**6)
    cfg.solver = SolverConfig(**{**defaults, **solver})
    return cfg.validate()
