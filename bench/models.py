"""The two models under test, their end-to-end inference pipelines, and synthetic inputs.

CondInst: `condinst.model.CondInst` with random weights (no download), thresholds forced so that
every image gives exactly `post_nms_topk` (100) detections. Mask R-CNN: torchvision's R-50-FPN
Mask R-CNN with random weights and the same forcing (score threshold 0, its own NMS, 100 per image).

Both pipelines take RGB uint8 images and return boxes plus boolean masks at each image's original
resolution, so that the timed work is the same job end to end.
"""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condinst.arch import get_preset
from condinst.config import BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig
from condinst.model import CondInst, normalize_and_pad
from condinst.postprocess import ImageResult
from condinst.predictor import Predictor
from condinst.preprocess import resized_shape

from .common import autocast

FAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---- command line ---------------------------------------------------------------------------------

def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags that define the two models and how their detections are forced (shared by the scripts)."""
    parser.add_argument("--preset", default="MS_R_50_1x", help="CondInst preset (default %(default)s)")
    parser.add_argument("--detections", type=int, default=100, help="detections forced per image (default 100)")
    parser.add_argument("--nms-off", action="store_true",
                        help="NMS IoU threshold 1.0 for both models (default: their own, CondInst 0.6, "
                             "Mask R-CNN 0.5)")
    parser.add_argument("--maskrcnn-score-thresh", type=float, default=0.0,
                        help="Mask R-CNN box score threshold (default 0: every proposal x class is a candidate)")
    parser.add_argument("--maskrcnn-norm", choices=("FrozenBN", "BN"), default="FrozenBN",
                        help="FrozenBN: the COCO-pretrained architecture (default); "
                             "BN: maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)")
    parser.add_argument("--min-size", type=int, default=None, help="test resize short side (default: preset, 800)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="test resize long-side cap (default: preset, 1333)")
    parser.add_argument("--tiny", action="store_true", help="narrow models for smoke tests (not a benchmark)")


def condinst_config_from_args(args: argparse.Namespace) -> CondInstConfig:
    """The CondInst config of `add_model_args` flags, detections forced."""
    return force_detections(condinst_config(args.preset, args.tiny), args.detections,
                            1.0 if args.nms_off else None, args.min_size, args.max_size)


def maskrcnn_from_args(args: argparse.Namespace, cfg: CondInstConfig) -> nn.Module:
    """The Mask R-CNN of `add_model_args` flags, at the same test resize as CondInst's `cfg`."""
    return build_maskrcnn(args.tiny, args.maskrcnn_norm, cfg.input.min_size_test, cfg.input.max_size_test,
                          args.detections, 1.0 if args.nms_off else 0.5, args.maskrcnn_score_thresh)


# ---- CondInst -------------------------------------------------------------------------------------

def condinst_config(preset: str = "MS_R_50_1x", tiny: bool = False) -> CondInstConfig:
    """A preset's config, or with `tiny` the same R-50 layout with narrow channels (smoke tests)."""
    cfg = get_preset(preset)
    if tiny:
        cfg.name = f"{preset}_tiny"
        cfg.backbone = BackboneConfig(stem_out_channels=16, res2_out_channels=64, width_per_group=16)
        cfg.neck = NeckConfig(out_channels=32)
        cfg.mask_branch = MaskBranchConfig(channels=16)
    return cfg.validate()


def force_detections(cfg: CondInstConfig, detections: int = 100, nms_threshold: float | None = None,
                     min_size: int | None = None, max_size: int | None = None) -> CondInstConfig:
    """Make every image give exactly `detections` detections: score threshold 0, top-k = `detections`.

    With score_threshold 0 every (location, class) pair is a candidate, so the top-k after NMS is
    always full. The top-k keeps exactly k (`topk_ties="exact"`): AdelaiDet's rule keeps every tie at
    the k-th score, and the nearly constant logits of random weights tie often in bf16 (a trained
    model's rarely do). `nms_threshold` (1.0 = no suppression) and the test resize can be overridden.
    """
    cfg.fcos.score_threshold = 0.0
    cfg.fcos.post_nms_topk = detections
    cfg.fcos.topk_ties = "exact"
    if nms_threshold is not None:
        cfg.fcos.nms_threshold = nms_threshold
    if min_size is not None:
        cfg.input.min_size_test = min_size
    if max_size is not None:
        cfg.input.max_size_test = max_size
    return cfg


def give_boxes_extent(model: CondInst, stride_units: float = 4.0) -> CondInst:
    """Set the box-regression bias so that random-weight boxes reach `stride_units` strides on each side.

    With the default initialisation (weights N(0, 0.01), bias 0) the relu'd regression is ~0 and
    most boxes are empty, so postprocess would drop them; 4 strides keeps every box non-empty after
    clipping to the image (the padding is at most 31 px).
    """
    nn.init.constant_(model.proposal_generator.fcos_head.bbox_pred.bias, stride_units)
    return model


def build_condinst(cfg: CondInstConfig, device: torch.device) -> CondInst:
    """Random-weight CondInst in eval mode on `device` (seed with torch.manual_seed first)."""
    return give_boxes_extent(CondInst(cfg)).to(device).eval()


# ---- SipMask --------------------------------------------------------------------------------------

SIPMASK_ROWS = {"sipmask_544": "sipmask_r50_caffe_fpn_ssd_6x", "sipmask_r50": "sipmask_r50_caffe_fpn_gn_1x"}


def sipmask_config(preset: str, tiny: bool = False):
    """A SipMask preset's config, or with `tiny` the same layout with narrow channels (smoke tests)."""
    cfg = get_preset(preset)
    if tiny:
        cfg.name = f"{preset}_tiny"
        cfg.backbone = BackboneConfig(stem_out_channels=16, res2_out_channels=64, width_per_group=16, freeze_at=2)
        cfg.neck = NeckConfig(out_channels=32)
    return cfg.validate()


def build_sipmask(cfg, device: torch.device) -> nn.Module:
    """Random-weight SipMask in eval mode, box distances of 4 strides (as `give_boxes_extent`)."""
    from condinst.sipmask.model import SipMask

    model = SipMask(cfg)
    nn.init.constant_(model.bbox_head.fcos_reg.bias, 4.0)
    return model.to(device).eval()


def resize_on_device(image: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """(3, H, W) uint8 on the device -> (3, h, w) float, shortest edge to `min_size` (long side
    <= `max_size`), antialiased bilinear rounded to integers: `Predictor._resize_on_device` for a tensor."""
    h, w = resized_shape(image.shape[-2], image.shape[-1], min_size, max_size)
    x = image[None].float()
    if (h, w) != tuple(image.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x[0].round_().clamp_(0, 255)


class CondInstPipeline:
    """RGB uint8 (3, H, W) tensors on the device -> `ImageResult`s (masks at the original size).

    The steps of `Predictor.__call__` in fast mode (resize on the device, channel order, normalise,
    pad, detect, segment, postprocess), starting from images that are already on the device.
    fast=False: fp32, contiguous. fast=True: channels_last, autocast to `fast_dtype` on CUDA.
    `self.predictor` is the matching `Predictor` for host (numpy) inputs.
    """

    def __init__(self, model: CondInst, cfg: CondInstConfig, device: torch.device, fast: bool = False,
                 fast_dtype: torch.dtype = torch.bfloat16):
        self.predictor = Predictor(model, cfg, device, fast=fast, fast_dtype=fast_dtype)
        self.model, self.cfg, self.device, self.fast = model, cfg, device, fast
        self.autocast_dtype = fast_dtype if fast and device.type == "cuda" else None

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[ImageResult]:
        cfg = self.cfg
        tensors, sizes = [], []
        for image in images:
            x = resize_on_device(image, cfg.input.min_size_test, cfg.input.max_size_test)
            if cfg.input.format == "BGR":
                x = x.flip(0)
            tensors.append(x)
            sizes.append(tuple(x.shape[-2:]))
        batch = normalize_and_pad(tensors, cfg.input.pixel_mean, cfg.input.pixel_std, cfg.input.size_divisibility)
        if self.fast or getattr(self.model, "inference_optimized", False):
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.autocast_dtype):
            outputs = self.model.forward_heads(batch)
        return self.predictor.results(outputs, tuple(batch.shape[-2:]), sizes,
                                      [tuple(image.shape[-2:]) for image in images])

    def host(self, arrays: list[np.ndarray]) -> list[ImageResult]:
        """The public API on (H, W, 3) uint8 numpy images (fp32 mode resizes with PIL on the host)."""
        return self.predictor(arrays)


# ---- torchvision Mask R-CNN -----------------------------------------------------------------------

def build_maskrcnn(tiny: bool = False, norm: str = "FrozenBN", min_size: int = 800, max_size: int = 1333,
                   detections: int = 100, nms_threshold: float = 0.5, score_threshold: float = 0.0) -> nn.Module:
    """torchvision Mask R-CNN R-50-FPN with random weights, forced to `detections` per image.

    score_threshold 0 keeps every (proposal, class) pair as a candidate so the top-`detections` is
    always full; `nms_threshold` is torchvision's default 0.5 (1.0 turns NMS off).
    norm="FrozenBN": the architecture of the COCO-pretrained `maskrcnn_resnet50_fpn(weights=...)`
    (FrozenBatchNorm2d, conv1 + layer1 frozen), i.e. what one would deploy and fine-tune, and the
    counterpart of CondInst's FrozenBN backbone with freeze_at=2. norm="BN": literally
    `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` (BatchNorm, all layers trainable).
    tiny: a ResNet-18 + 32-channel FPN with small heads and 200 proposals, for smoke tests only.
    Nothing is downloaded (weights=None everywhere).
    """
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    forced = dict(box_score_thresh=score_threshold, box_nms_thresh=nms_threshold,
                  box_detections_per_img=detections, min_size=min_size, max_size=max_size)
    if tiny:
        return _tiny_maskrcnn(**forced)
    if norm == "BN":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **forced)
    if norm != "FrozenBN":
        raise ValueError(f"norm must be FrozenBN or BN, got {norm!r}")
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    return MaskRCNN(backbone, num_classes=91, **forced)


def _tiny_maskrcnn(**kwargs: Any) -> nn.Module:
    """ResNet-18 body, 32-channel FPN, 64-d box head, 16-channel mask head, 200 proposals
    (fast on one CPU thread)."""
    from torchvision.models import resnet18
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import FrozenBatchNorm2d

    body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    channels = 32
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], channels)
    return MaskRCNN(backbone, num_classes=None,
                    box_head=TwoMLPHead(channels * 7 * 7, 64), box_predictor=FastRCNNPredictor(64, 91),
                    mask_head=MaskRCNNHeads(channels, [16, 16], 1), mask_predictor=MaskRCNNPredictor(16, 16, 91),
                    rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=200,
                    rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=200, box_batch_size_per_image=64,
                    **kwargs)


class MaskRCNNPipeline:
    """RGB uint8 (3, H, W) tensors on the device -> torchvision outputs with boolean masks (K, H, W).

    torchvision resizes (800 / 1333), normalises, batches, detects, and pastes the 28x28 masks at
    the original size; the masks are thresholded at 0.5 here. fast=True: channels_last weights,
    autocast to `fast_dtype` on CUDA (the same precision settings as CondInst's fast mode).
    """

    def __init__(self, model: nn.Module, device: torch.device, fast: bool = False,
                 fast_dtype: torch.dtype = torch.bfloat16, mask_threshold: float = 0.5):
        self.model = model.to(device).eval()
        if fast:
            self.model.to(memory_format=torch.channels_last)
        self.device, self.fast, self.mask_threshold = device, fast, mask_threshold
        self.autocast_dtype = fast_dtype if fast and device.type == "cuda" else None

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        floats = [image.float().div_(255.0) for image in images]
        with autocast(self.device, self.autocast_dtype):
            outputs = self.model(floats)
        for out in outputs:
            out["masks"] = out["masks"][:, 0] > self.mask_threshold
        return outputs

    def host(self, arrays: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        """(H, W, 3) uint8 numpy images: copied to the device, then as `__call__`."""
        return self([torch.from_numpy(a).to(self.device).permute(2, 0, 1) for a in arrays])


def count_detections(outputs: list) -> list[int]:
    """Detections per image of either pipeline's output."""
    return [len(out) if isinstance(out, ImageResult) else int(out["boxes"].shape[0]) for out in outputs]


def check_masks_at_original_size(outputs: list, sizes: list[tuple[int, int]]) -> None:
    """Both pipelines must return (K, H, W) bool masks at each image's original (H, W)."""
    for out, size in zip(outputs, sizes):
        masks = out.masks if isinstance(out, ImageResult) else out["masks"]
        if masks.dtype != torch.bool or tuple(masks.shape[-2:]) != tuple(size):
            raise AssertionError(f"masks {tuple(masks.shape)} {masks.dtype}, expected bool at {size}")


def describe_models(cfg: CondInstConfig, condinst: nn.Module, maskrcnn: nn.Module) -> dict[str, dict[str, Any]]:
    """The settings that decide the work each model does, for the JSON record."""
    def millions(model: nn.Module) -> float:
        return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)

    roi, rpn, transform = maskrcnn.roi_heads, maskrcnn.rpn, maskrcnn.transform
    return {
        "condinst": {"config": cfg.name, "parameters_m": millions(condinst), "num_classes": cfg.fcos.num_classes,
                     "score_threshold": cfg.fcos.score_threshold, "pre_nms_topk": cfg.fcos.pre_nms_topk,
                     "nms_threshold": cfg.fcos.nms_threshold, "post_nms_topk": cfg.fcos.post_nms_topk,
                     "topk_ties": cfg.fcos.topk_ties, "mask_out_stride": cfg.mask_head.mask_out_stride,
                     "test_resize": [cfg.input.min_size_test, cfg.input.max_size_test]},
        "maskrcnn": {"parameters_m": millions(maskrcnn), "num_classes": 91, "score_threshold": roi.score_thresh,
                     "nms_threshold": roi.nms_thresh, "detections_per_img": roi.detections_per_img,
                     "rpn_post_nms_top_n_test": rpn._post_nms_top_n["testing"],
                     "test_resize": [transform.min_size[-1], transform.max_size]},
    }


# ---- synthetic inputs -----------------------------------------------------------------------------

def random_images(size: tuple[int, int], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random (H, W, 3) uint8 RGB images."""
    return [rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8) for _ in range(count)]


def to_device_chw(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """(H, W, 3) numpy images -> contiguous (3, H, W) uint8 tensors on `device`."""
    return [torch.from_numpy(a).permute(2, 0, 1).contiguous().to(device) for a in arrays]


def random_instances(height: int, width: int, count: int, num_classes: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` random ellipses: boxes (G, 4) float32 xyxy (tight), classes (G,) int64, masks (G, H, W) bool.

    Each ellipse spans 5-50% of the image side in each direction, so that the instances fall on
    several FPN levels.
    """
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    boxes, masks = [], []
    for _ in range(count):
        bw = rng.uniform(0.05, 0.5) * width
        bh = rng.uniform(0.05, 0.5) * height
        cx = rng.uniform(bw / 2, width - bw / 2)
        cy = rng.uniform(bh / 2, height - bh / 2)
        mask = ((xs - cx) / (bw / 2)) ** 2 + ((ys - cy) / (bh / 2)) ** 2 <= 1.0
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        masks.append(mask)
    classes = rng.integers(0, num_classes, size=count)
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.as_tensor(classes, dtype=torch.int64),
            torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.bool))
