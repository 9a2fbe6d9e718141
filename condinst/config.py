"""Plain-dataclass configuration of a CondInst model.

One `CondInstConfig` describes the architecture, the input pipeline and the test-time settings.
Presets named after the official AdelaiDet models (and the mmdetection recipe) are `PRESETS`;
`CondInstConfig.to_dict` / `from_dict` round-trip a config through JSON so checkpoints can carry it.
Above this module: `condinst.arch` (every model's presets, `get_preset`, `config_from_dict`) and
`condinst.config_sources.load_config`, the one front door (preset, YAML, JSON dump or checkpoint).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import UserError

# Detectron2 MSRA (caffe) ResNet: BGR 0..255 minus mean, std 1.
CAFFE_PIXEL_MEAN = (103.530, 116.280, 123.675)
CAFFE_PIXEL_STD = (1.0, 1.0, 1.0)
# torchvision / mmdetection: RGB with ImageNet statistics (0..255 scale).
TORCHVISION_PIXEL_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_PIXEL_STD = (58.395, 57.12, 57.375)


class ConfigError(UserError, ValueError):
    """A configuration value or a preset/YAML file that cannot describe a CondInst model."""


@dataclass
class BackboneConfig:
    """ResNet bottom-up network.

    style: "caffe" = detectron2/MSRA (stride 2 in the 1x1 conv, FrozenBN), the AdelaiDet models;
           "pytorch" = torchvision (stride 2 in the 3x3 conv), the mmdetection model.
    """

    depth: Literal[50, 101] = 50
    style: Literal["caffe", "pytorch"] = "caffe"
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    width_per_group: int = 64
    freeze_at: int = 2  # 0 = train everything, 1 = freeze stem, 2 = stem + res2 (detectron2 meaning)
    # FrozenBN for pretrained weights (all official models); GN / BN to train from scratch.
    norm: Literal["FrozenBN", "BN", "GN"] = "FrozenBN"
    # Stages res2..res5 (2..5) whose 3x3 convs are deformable (torchvision deform_conv2d, offsets from a
    # 3x3 conv), as mmdetection's `stage_with_dcn`; SipMask++ uses (3, 4, 5).
    dcn_stages: tuple[int, ...] = ()


@dataclass
class NeckConfig:
    """FPN (P3-P7, P6 from P5, P7 from relu(P6)) or BiFPN on res3-res5."""

    kind: Literal["fpn", "bifpn"] = "fpn"
    out_channels: int = 256
    bifpn_num_repeats: int = 6


@dataclass
class FCOSConfig:
    num_classes: int = 80
    num_convs: int = 4  # per tower (cls and box)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    sizes_of_interest: tuple[int, ...] = (64, 128, 256, 512)  # FCOS size-range boundaries
    prior_prob: float = 0.01
    use_scale: bool = True
    # inference
    score_threshold: float = 0.05  # INFERENCE_TH_TEST
    thresh_with_ctr: bool = True  # threshold / top-k on cls*ctr (AdelaiDet) or cls only (mmdet)
    score_mode: Literal["sqrt", "product"] = "sqrt"  # final score sqrt(cls*ctr) or cls*ctr
    pre_nms_topk: int = 1000  # per level
    post_nms_topk: int = 100
    nms_threshold: float = 0.6
    clip_boxes_at_decode: bool = False  # mmdet clamps decoded boxes to the resized image
    topk_ties: Literal["kthvalue", "exact"] = "kthvalue"  # AdelaiDet keeps ties at the 100th score
    # training
    center_sample: bool = True
    pos_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class MaskBranchConfig:
    channels: int = 128
    out_channels: int = 8  # C_mask
    num_convs: int = 4
    semantic_loss_on: bool = False
    # training
    sem_loss_alpha: float = 0.25
    sem_loss_gamma: float = 2.0


@dataclass
class MaskHeadConfig:
    """The dynamic mask head whose filters the controller generates."""

    num_layers: int = 3
    channels: int = 8
    coords: Literal["relative", "absolute", "none"] = "relative"
    mask_out_stride: int = 4  # the paper used 2, the official repo 4
    mask_threshold: float = 0.5
    nms: Literal["box", "mask"] = "box"  # paper Table 5
    # training
    max_proposals: int = 500
    topk_proposals_per_im: int = -1
    dice_eps: float = 1e-5


@dataclass
class InputConfig:
    format: Literal["BGR", "RGB"] = "BGR"
    pixel_mean: tuple[float, float, float] = CAFFE_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = CAFFE_PIXEL_STD
    min_size_test: int = 800
    max_size_test: int = 1333
    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    size_divisibility: int = 32
    hflip_train: bool = True
    # Test-time resize: "shortest_edge" = detectron2 (PIL bilinear, short side min_size_test, long side
    # <= max_size_test); "mmcv_rescale" = mmcv.imrescale to img_scale (max_size_test, min_size_test),
    # keeping the ratio; "mmcv_resize" = mmcv.imresize to max_size_test x min_size_test (w x h), not
    # keeping it. Both mmcv modes use cv2 bilinear (the mmdetection v1 models, e.g. SipMask).
    resize: Literal["shortest_edge", "mmcv_rescale", "mmcv_resize"] = "shortest_edge"


@dataclass
class SolverConfig:
    ims_per_batch: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    max_iter: int = 90000
    steps: tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    checkpoint_period: int = 5000
    clip_gradients: float = 0.0  # 0 = off; else max L2 norm


@dataclass
class CondInstConfig:
    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    mask_branch: MaskBranchConfig = field(default_factory=MaskBranchConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    # Contiguous class index -> (dataset category id, name). Empty = COCO when num_classes is 80.
    category_ids: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def mask_head_in_channels(self) -> int:
        extra = 0 if self.mask_head.coords == "none" else 2
        return self.mask_branch.out_channels + extra

    @property
    def num_gen_params(self) -> int:
        """Number of dynamic parameters the controller generates per location (169 by default)."""
        c, cin, n = self.mask_head.channels, self.mask_head_in_channels, self.mask_head.num_layers
        if n == 1:
            return cin + 1
        weights = cin * c + c * c * (n - 2) + c
        biases = c * (n - 1) + 1
        return weights + biases

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CondInstConfig":
        return _from_dict(cls, d, "config")

    def validate(self) -> "CondInstConfig":
        if self.backbone.depth not in (50, 101):
            raise ConfigError(f"backbone.depth must be 50 or 101, got {self.backbone.depth}")
        if self.backbone.style not in ("caffe", "pytorch"):
            raise ConfigError(f"backbone.style must be 'caffe' or 'pytorch', got {self.backbone.style!r}")
        if self.backbone.norm not in ("FrozenBN", "BN", "GN"):
            raise ConfigError(f"backbone.norm must be FrozenBN, BN or GN, got {self.backbone.norm!r}")
        if self.neck.kind not in ("fpn", "bifpn"):
            raise ConfigError(f"neck.kind must be 'fpn' or 'bifpn', got {self.neck.kind!r}")
        if self.neck.out_channels % 32:
            raise ConfigError("neck.out_channels must be a multiple of 32 (GroupNorm(32) in the FCOS towers)")
        if len(self.fcos.strides) != 5 or len(self.fcos.sizes_of_interest) != 4:
            raise ConfigError("CondInst uses five levels P3-P7: 5 strides and 4 sizes_of_interest")
        if self.mask_head.num_layers < 1 or self.mask_head.channels < 1:
            raise ConfigError("mask_head.num_layers and mask_head.channels must be >= 1")
        if self.mask_head.coords not in ("relative", "absolute", "none"):
            raise ConfigError(f"mask_head.coords must be relative/absolute/none, got {self.mask_head.coords!r}")
        if self.mask_head.mask_out_stride not in (1, 2, 4, 8):
            raise ConfigError("mask_head.mask_out_stride must divide the mask-branch stride 8 (1, 2, 4 or 8)")
        if self.mask_head.nms not in ("box", "mask"):
            raise ConfigError(f"mask_head.nms must be 'box' or 'mask', got {self.mask_head.nms!r}")
        if self.fcos.score_mode not in ("sqrt", "product"):
            raise ConfigError(f"fcos.score_mode must be 'sqrt' or 'product', got {self.fcos.score_mode!r}")
        validate_input(self.input)
        if self.class_names and len(self.class_names) != self.fcos.num_classes:
            raise ConfigError(
                f"{len(self.class_names)} class names for fcos.num_classes={self.fcos.num_classes}"
            )
        if self.category_ids and len(self.category_ids) != self.fcos.num_classes:
            raise ConfigError(
                f"{len(self.category_ids)} category ids for fcos.num_classes={self.fcos.num_classes}"
            )
        return self


def validate_input(inp: InputConfig) -> None:
    if inp.format not in ("BGR", "RGB"):
        raise ConfigError(f"input.format must be 'BGR' or 'RGB', got {inp.format!r}")
    if inp.resize not in ("shortest_edge", "mmcv_rescale", "mmcv_resize"):
        raise ConfigError(f"input.resize must be shortest_edge, mmcv_rescale or mmcv_resize, got {inp.resize!r}")


def _from_dict(cls: type, d: Any, where: str) -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with their dotted path."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{name}: expected a list, got {value!r}")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# ---- presets -------------------------------------------------------------------------------
# One per official config file (aim-uofa/AdelaiDet configs/CondInst/*.yaml, open-mmlab/mmdetection
# configs/condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py); tests/condinst/test_official_presets.py
# pins each to the numbers of its file.

_SCHEDULE_3X = dict(max_iter=270000, steps=(210000, 250000))


def _adelaidet(name: str, depth: int, bifpn: bool, schedule_3x: bool, sem: bool) -> CondInstConfig:
    cfg = CondInstConfig(name=name)
    cfg.backbone.depth = depth
    if bifpn:
        cfg.neck = NeckConfig(kind="bifpn", out_channels=160, bifpn_num_repeats=6)
    if schedule_3x:
        cfg.solver = SolverConfig(**_SCHEDULE_3X)
    cfg.mask_branch.semantic_loss_on = sem
    return cfg


def _mmdet_r50() -> CondInstConfig:
    cfg = CondInstConfig(name="mmdet_condinst_r50_fpn_ms_poly_90k")
    cfg.backbone = BackboneConfig(depth=50, style="pytorch", freeze_at=2)
    cfg.input = InputConfig(format="RGB", pixel_mean=TORCHVISION_PIXEL_MEAN, pixel_std=TORCHVISION_PIXEL_STD)
    cfg.fcos.thresh_with_ctr = False
    cfg.fcos.score_mode = "product"
    cfg.fcos.clip_boxes_at_decode = True
    cfg.fcos.topk_ties = "exact"
    cfg.mask_head.max_proposals = 300
    cfg.mask_head.dice_eps = 5e-6
    # mmengine's SGD decays every parameter, norms included; checkpoints every 10k iterations.
    cfg.solver.weight_decay_norm = 1e-4
    cfg.solver.checkpoint_period = 10000
    return cfg


PRESETS: dict[str, Any] = {
    "MS_R_50_1x": lambda: _adelaidet("MS_R_50_1x", 50, False, False, False),
    "MS_R_50_3x": lambda: _adelaidet("MS_R_50_3x", 50, False, True, False),
    "MS_R_50_3x_sem": lambda: _adelaidet("MS_R_50_3x_sem", 50, False, True, True),
    "MS_R_101_1x": lambda: _adelaidet("MS_R_101_1x", 101, False, False, False),
    "MS_R_101_3x": lambda: _adelaidet("MS_R_101_3x", 101, False, True, False),
    "MS_R_101_3x_sem": lambda: _adelaidet("MS_R_101_3x_sem", 101, False, True, True),
    "MS_R_50_BiFPN_1x": lambda: _adelaidet("MS_R_50_BiFPN_1x", 50, True, False, False),
    "MS_R_50_BiFPN_3x": lambda: _adelaidet("MS_R_50_BiFPN_3x", 50, True, True, False),
    "MS_R_50_BiFPN_3x_sem": lambda: _adelaidet("MS_R_50_BiFPN_3x_sem", 50, True, True, True),
    "MS_R_101_BiFPN_3x": lambda: _adelaidet("MS_R_101_BiFPN_3x", 101, True, True, False),
    "MS_R_101_BiFPN_3x_sem": lambda: _adelaidet("MS_R_101_BiFPN_3x_sem", 101, True, True, True),
    "mmdet_condinst_r50_fpn_ms_poly_90k": _mmdet_r50,
}
