"""Plain-dataclass configuration of a SipMask model (the architecture of the official configs).

The backbone, neck, FCOS, input and solver parts are CondInst's own dataclasses, so the predictor,
the CLI and `load_config` treat both models alike; `SipMaskHeadConfig` holds what is SipMask's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import (BackboneConfig, ConfigError, FCOSConfig, InputConfig, NeckConfig, SolverConfig,
                      _from_dict, validate_input)

# mmdetection v1 caffe ResNet (`img_norm_cfg` of every SipMask config): BGR 0..255, std 1.
SIPMASK_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)
ARCH = "sipmask"


@dataclass
class SipMaskHeadConfig:
    """SipMask's own head settings (`bbox_head` of the official configs).

    fcos.num_convs is `stacked_convs`: the box tower has that many convs, the class tower one fewer.
    """

    num_bases: int = 32  # basis masks; each location predicts 4 x num_bases coefficients
    norm: Literal["GN", "none"] = "GN"  # head towers (and the feature-align GN); "none" = ssd configs
    nms: Literal["fast", "multiclass"] = "multiclass"  # Fast NMS (ssd_flag) or class-wise +1 NMS
    fast_nms_top_k: int = 200  # candidates per class entering Fast NMS
    mask_threshold: float = 0.4
    rescoring: bool = False  # SipMask++ mask re-scoring branch (mask IoU regression)
    mask_out_stride: int = 2  # stride of the basis masks (and of the GT masks of the mask loss)


@dataclass
class SipMaskConfig:
    name: str = "sipmask_custom"
    arch: str = ARCH
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(freeze_at=2))
    neck: NeckConfig = field(default_factory=NeckConfig)
    fcos: FCOSConfig = field(default_factory=lambda: FCOSConfig(
        num_convs=4, score_threshold=0.05, thresh_with_ctr=False, score_mode="product", nms_threshold=0.5,
        clip_boxes_at_decode=True, topk_ties="exact"))
    sipmask: SipMaskHeadConfig = field(default_factory=SipMaskHeadConfig)
    input: InputConfig = field(default_factory=lambda: InputConfig(
        pixel_mean=SIPMASK_PIXEL_MEAN, min_size_test=800, max_size_test=1333, min_size_train=(800,),
        resize="mmcv_rescale"))
    solver: SolverConfig = field(default_factory=SolverConfig)
    category_ids: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()

    @property
    def mask_head(self) -> SipMaskHeadConfig:
        """The mask settings under the name CondInst's callers use (`cfg.mask_head.mask_threshold`)."""
        return self.sipmask

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SipMaskConfig":
        return _from_dict(cls, d, "config")

    def validate(self) -> "SipMaskConfig":
        if self.arch != ARCH:
            raise ConfigError(f"arch must be {ARCH!r}, got {self.arch!r}")
        if self.backbone.depth not in (50, 101) or self.backbone.style != "caffe":
            raise ConfigError("SipMask uses a caffe-style ResNet-50 or -101")
        if any(s not in (2, 3, 4, 5) for s in self.backbone.dcn_stages):
            raise ConfigError(f"backbone.dcn_stages must be among 2, 3, 4, 5, got {self.backbone.dcn_stages}")
        if self.neck.kind != "fpn":
            raise ConfigError("SipMask uses the FPN neck")
        if len(self.fcos.strides) != 5 or self.fcos.num_convs < 1:
            raise ConfigError("SipMask uses five levels P3-P7 and at least one tower conv")
        if self.sipmask.norm not in ("GN", "none"):
            raise ConfigError(f"sipmask.norm must be 'GN' or 'none', got {self.sipmask.norm!r}")
        if self.sipmask.nms not in ("fast", "multiclass"):
            raise ConfigError(f"sipmask.nms must be 'fast' or 'multiclass', got {self.sipmask.nms!r}")
        validate_input(self.input)
        for what, items in (("class names", self.class_names), ("category ids", self.category_ids)):
            if items and len(items) != self.fcos.num_classes:
                raise ConfigError(f"{len(items)} {what} for fcos.num_classes={self.fcos.num_classes}")
        return self
