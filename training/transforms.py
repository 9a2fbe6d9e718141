"""Training/test transforms and batching: record dict -> `TrainSample` -> `TrainBatch`.

The official pipeline (AdelaiDet `DatasetMapperWithBasis` on detectron2) is reproduced:

* ResizeShortestEdge: short side = a random choice of `cfg.input.min_size_train` (640..800), long
  side <= `max_size_train` (1333), new size int(x + 0.5); the image is resized with PIL bilinear on
  uint8 (`condinst.preprocess.resize_image`, the same code as inference).
* Horizontal flip with probability 0.5 (`cfg.input.hflip_train`).
* Crowd annotations are dropped; the boxes are the JSON boxes (xywh -> xyxy in float32 as
  detectron2's BoxMode does), transformed as their four corners, clipped to the image; instances
  whose box is left with no extent are dropped (detectron2 `filter_empty_instances`). The boxes are
  not recomputed from the masks: detectron2 only does that when random cropping is on, which the
  CondInst recipe does not use. (For the parity fixture the JSON boxes are the tight boxes of the
  polygon vertices, so both agree.)
* Masks: polygons are transformed as coordinates (float64, resize then mirror) and rasterised with
  pycocotools at the transformed image size, exactly what detectron2 does; rasterising at the image
  size and zero-padding later equals rasterising at the padded size for polygons inside the image
  (checked on the parity batch). RLE masks (compressed or not) are decoded at the original size and
  resized with PIL NEAREST, as detectron2's `apply_segmentation` does, then mirrored.
* Channel order of the model (`cfg.input.format`, BGR for the official weights).

The geometry runs in numpy float64 like detectron2's transforms so that boxes match to the bit;
the mirror of the image and bitmask tensors uses torchvision.transforms.v2.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from condinst.config import CondInstConfig
from condinst.model import normalize_and_pad
from condinst.preprocess import resize_to, resized_shape

BOX_MIN_SIZE = 1e-5  # detectron2 filter_empty_instances(box_threshold)


# ---- containers ---------------------------------------------------------------------------------

@dataclass
class TrainSample:
    """One transformed image with its instances (G of them)."""

    image: torch.Tensor  # (3, H, W) uint8, model channel order
    gt_boxes: torch.Tensor  # (G, 4) float32 x1, y1, x2, y2 in image pixels
    gt_classes: torch.Tensor  # (G,) int64 contiguous class index
    gt_masks: torch.Tensor  # (G, H, W) bool
    image_id: int = -1
    original_size: tuple[int, int] = (0, 0)  # (height, width) before resizing

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.image.shape[-2:])


class ImageTargets(NamedTuple):
    """Ground truth of one image of a batch, masks padded to the batch size."""

    gt_boxes: torch.Tensor  # (G, 4) float32 xyxy
    gt_classes: torch.Tensor  # (G,) int64
    gt_masks: torch.Tensor  # (G, Hp, Wp) bool

    def to(self, device, non_blocking: bool = False) -> "ImageTargets":
        return ImageTargets(*(t.to(device, non_blocking=non_blocking) for t in self))

    def pin_memory(self) -> "ImageTargets":
        return ImageTargets(*(t.pin_memory() for t in self))


@dataclass
class TrainBatch:
    """A padded batch ready for `CondInst.forward_heads` and `training.losses.compute_losses`."""

    images: torch.Tensor  # (B, 3, Hp, Wp) float32, normalised then zero-padded to a multiple of 32
    targets: list[ImageTargets]
    image_sizes: list[tuple[int, int]]  # (h, w) of each image before padding
    image_ids: list[int] = field(default_factory=list)
    original_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device, non_blocking: bool = False) -> "TrainBatch":
        return TrainBatch(self.images.to(device, non_blocking=non_blocking),
                          [t.to(device, non_blocking) for t in self.targets],
                          self.image_sizes, self.image_ids, self.original_sizes)

    def pin_memory(self) -> "TrainBatch":
        """Called by DataLoader(pin_memory=True) in its pinning thread."""
        return TrainBatch(self.images.pin_memory(), [t.pin_memory() for t in self.targets],
                          self.image_sizes, self.image_ids, self.original_sizes)


# ---- geometry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResizeFlip:
    """Resize (height, width) -> (new_height, new_width), then mirror left-right if `hflip`."""

    height: int
    width: int
    new_height: int
    new_width: int
    hflip: bool = False

    @staticmethod
    def shortest_edge(height: int, width: int, short_edge: int | None, max_size: int,
                      hflip: bool = False) -> "ResizeFlip":
        """detectron2 ResizeShortestEdge; `short_edge=None` keeps the size."""
        nh, nw = (height, width) if short_edge is None else resized_shape(height, width, short_edge, max_size)
        return ResizeFlip(height, width, nh, nw, hflip)

    @property
    def resizes(self) -> bool:
        return (self.new_height, self.new_width) != (self.height, self.width)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> resized (not mirrored) with PIL bilinear on uint8, the resampling of
        `condinst.preprocess.resize_image` (detectron2 ResizeTransform; antialiased when shrinking)."""
        if not self.resizes:
            return image
        return resize_to(image, self.new_height, self.new_width)

    def apply_coords(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) float64 (x, y) points -> transformed points."""
        xy = xy * [self.new_width / self.width, self.new_height / self.height]
        if self.hflip:
            xy[:, 0] = self.new_width - xy[:, 0]
        return xy

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """(4,) xyxy -> box around the four transformed corners, clipped to the new image."""
        x0, y0, x1, y1 = box
        corners = self.apply_coords(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64))
        out = np.concatenate([corners.min(axis=0), corners.max(axis=0)]).clip(min=0)
        return np.minimum(out, [self.new_width, self.new_height, self.new_width, self.new_height])

    def apply_bitmask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) uint8 mask at the original size -> resized with PIL NEAREST (not mirrored)."""
        if not self.resizes:
            return mask
        return np.asarray(Image.fromarray(mask).resize((self.new_width, self.new_height), Image.NEAREST))


def xywh_to_xyxy(box: list[float]) -> np.ndarray:
    """detectron2 BoxMode.convert on a list: float32 arithmetic (x2 = float32(x) + float32(w))."""
    x, y, w, h = np.asarray(box, dtype=np.float32)
    return np.array([x, y, x + w, y + h], dtype=np.float32).astype(np.float64)


def rasterize_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Polygon parts (flat x, y lists) -> (height, width) uint8 union mask (detectron2 polygons_to_bitmask)."""
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons], height, width)
    return mask_util.decode(mask_util.merge(rles))


def decode_rle(segmentation: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed or uncompressed counts) -> (h, w) uint8 mask."""
    h, w = segmentation["size"]
    rle = segmentation
    if isinstance(segmentation["counts"], list):
        rle = mask_util.frPyObjects(segmentation, h, w)
    return mask_util.decode(rle)


# ---- record -> sample -----------------------------------------------------------------------------

def transform_record(record: dict[str, Any], cfg: CondInstConfig, short_edge: int | None, max_size: int,
                     hflip: bool) -> TrainSample:
    """Apply one resize (+ optional mirror) to a record's image and non-crowd instances.

    short_edge / max_size: ResizeShortestEdge target (short_edge None keeps the size, as for the
    parity fixture); hflip: mirror left-right after resizing.
    """
    image = record["image"]
    h, w = image.shape[:2]
    geom = ResizeFlip.shortest_edge(h, w, short_edge, max_size, hflip)
    image = geom.apply_image(image)
    chw = image.transpose(2, 0, 1)
    if cfg.input.format == "BGR":
        chw = chw[::-1]
    image_t = torch.from_numpy(np.ascontiguousarray(chw))

    boxes, classes, masks, done_flip = [], [], [], []  # done_flip: mirrored as coordinates
    for ann in record.get("annotations", ()):
        if ann.get("iscrowd", 0):
            continue
        box = geom.apply_box(xywh_to_xyxy(ann["bbox"]))
        if box[2] - box[0] <= BOX_MIN_SIZE or box[3] - box[1] <= BOX_MIN_SIZE:
            continue
        seg = ann["segmentation"]
        if isinstance(seg, dict):  # RLE: decode at the original size, resize like an image
            mask = geom.apply_bitmask(decode_rle(seg))
            done_flip.append(False)
        else:  # polygons: transform the vertices, rasterise at the new size
            polys = [geom.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).ravel() for p in seg]
            mask = rasterize_polygons(polys, geom.new_height, geom.new_width)
            done_flip.append(True)
        boxes.append(box)
        classes.append(ann["class_index"])
        masks.append(mask)

    nh, nw = geom.new_height, geom.new_width
    gt_masks = (torch.from_numpy(np.stack(masks)).bool() if masks else torch.zeros((0, nh, nw), dtype=torch.bool))
    if hflip:
        image_t = TF.horizontal_flip(tv_tensors.Image(image_t)).as_subclass(torch.Tensor)
        to_flip = torch.tensor([not done for done in done_flip], dtype=torch.bool)
        if to_flip.any():
            gt_masks[to_flip] = TF.horizontal_flip(tv_tensors.Mask(gt_masks[to_flip])).as_subclass(torch.Tensor)
    return TrainSample(
        image=image_t,
        gt_boxes=torch.as_tensor(np.array(boxes, dtype=np.float64).reshape(-1, 4), dtype=torch.float32),
        gt_classes=torch.as_tensor(classes, dtype=torch.int64),
        gt_masks=gt_masks,
        image_id=int(record.get("image_id", -1)),
        original_size=(h, w),
    )


class TrainTransform:
    """Random ResizeShortestEdge (choice of `cfg.input.min_size_train`) + horizontal flip.

    Pass a seeded `torch.Generator` to make one sample's augmentation reproducible (the train loader
    does so per sample); without it torch's global RNG is used.
    """

    def __init__(self, cfg: CondInstConfig):
        self.cfg = cfg
        self.sizes = tuple(cfg.input.min_size_train)
        self.max_size = cfg.input.max_size_train
        self.hflip = cfg.input.hflip_train

    def __call__(self, record: dict[str, Any], generator: torch.Generator | None = None) -> TrainSample:
        short = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=generator))]
        flip = self.hflip and float(torch.rand((), generator=generator)) < 0.5
        return transform_record(record, self.cfg, short, self.max_size, flip)


class TestTransform:
    """Deterministic resize to `cfg.input.min_size_test` / `max_size_test`, no flip (validation).

    with_annotations=False skips the ground truth (empty targets), e.g. for COCO evaluation where
    only the image is needed.
    """

    __test__ = False  # not a pytest class

    def __init__(self, cfg: CondInstConfig, with_annotations: bool = True):
        self.cfg = cfg
        self.with_annotations = with_annotations

    def __call__(self, record: dict[str, Any], generator: torch.Generator | None = None) -> TrainSample:
        if not self.with_annotations:
            record = {k: v for k, v in record.items() if k != "annotations"}
        return transform_record(record, self.cfg, self.cfg.input.min_size_test, self.cfg.input.max_size_test,
                                False)


# ---- batching -------------------------------------------------------------------------------------

def pad_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(G, h, w) -> (G, height, width), zeros at the bottom/right."""
    g, h, w = masks.shape
    if (h, w) == (height, width):
        return masks
    out = masks.new_zeros((g, height, width))
    out[:, :h, :w] = masks
    return out


def collate(samples: list[TrainSample], cfg: CondInstConfig) -> TrainBatch:
    """Normalise and pad the images (`condinst.model.normalize_and_pad`); pad the masks alike."""
    images = normalize_and_pad([s.image for s in samples], cfg.input.pixel_mean, cfg.input.pixel_std,
                               cfg.input.size_divisibility)
    hp, wp = images.shape[-2:]
    targets = [ImageTargets(s.gt_boxes, s.gt_classes, pad_masks(s.gt_masks, hp, wp)) for s in samples]
    return TrainBatch(images, targets, [s.image_size for s in samples], [s.image_id for s in samples],
                      [s.original_size for s in samples])

