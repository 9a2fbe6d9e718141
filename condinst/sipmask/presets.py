"""SipMask presets named after the official config files (JialeCao001/SipMask, configs/sipmask/)."""
from __future__ import annotations

from ..config import SolverConfig
from .config import SipMaskConfig

# Real-time models: 544x544 without keeping the ratio, 1 class conv + 2 box convs, Fast NMS.
_FAST = ("sipmask_r50_caffe_fpn_ssd_6x", "sipmask_r50_caffe_fpn_ssd_gn_10x", "sipmask_r101_caffe_fpn_ssd_6x",
         "sipmask_r101_caffe_fpn_ssd_gn_10x", "sipmask++_r101_caffe_fpn_ssd_6x",
         "sipmask++_r101_caffe_fpn_ssd_gn_10x")
# High-accuracy models: 1333x800 keeping the ratio, GN towers of 2 class + 3 box convs, class-wise NMS.
_ACCURATE = {"sipmask_r50_caffe_fpn_gn_1x": (8, 11, 12), "sipmask_r50_caffe_fpn_gn_ms_2x": (20, 23, 24),
             "sipmask_r101_caffe_fpn_gn_ms_4x": (40, 46, 48)}


def _build(name: str) -> SipMaskConfig:
    cfg = SipMaskConfig(name=name)
    cfg.backbone.depth = 101 if "_r101_" in name else 50
    if name in _ACCURATE:  # COCO epochs of 7330 iterations at 16 images
        *steps, epochs = _ACCURATE[name]
        cfg.solver = SolverConfig(max_iter=epochs * 7330, steps=tuple(s * 7330 for s in steps), warmup_iters=500,
                                  warmup_factor=1 / 3)
        return cfg
    cfg.fcos.num_convs = 2
    cfg.fcos.score_threshold = 0.1
    cfg.sipmask.nms = "fast"
    cfg.sipmask.norm = "GN" if "_gn_" in name else "none"
    cfg.input.resize = "mmcv_resize"
    cfg.input.min_size_test = cfg.input.max_size_test = 544
    cfg.input.min_size_train = (576,)
    cfg.input.max_size_train = 576
    if name.startswith("sipmask++"):
        cfg.sipmask.rescoring = True
        cfg.backbone.dcn_stages = (3, 4, 5)
    # The official schedules (RepeatDataset x3, SSD augmentation) are not reproduced: solver defaults.
    return cfg


SIPMASK_PRESETS = {name: (lambda n=name: _build(n)) for name in (*_ACCURATE, *_FAST)}
