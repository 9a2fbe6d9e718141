"""SipMask presets named after the official config files (JialeCao001/SipMask, SipMask-mmdetection/configs/sipmask/).

Each file is one row of `_OFFICIAL`; `tests/condinst/test_official_presets.py` pins every row to the files.
Two families:
  * high-accuracy (`*_gn_1x`, `*_gn_ms_*x`): 1333x800 keeping the ratio, GN towers of `stacked_convs=4`
    (3 class + 4 box convs), class-wise NMS with centerness factors, 4 GPUs x `imgs_per_gpu`;
  * real-time (`*_ssd_*`): 544x544 not keeping the ratio, `stacked_convs=2` (1 class + 2 box convs), Fast NMS,
    COCO repeated 3x (6x schedules) or 5x (10x) per epoch, 4 GPUs x 8 images.
Epochs become iterations over the 117266 COCO train2017 images that have annotations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import SolverConfig
from .config import SipMaskConfig

COCO_TRAIN_IMAGES = 117266  # train2017 images with annotations (mmdetection keeps only those)
NUM_GPUS = 4  # SipMask-mmdetection README: `dist_train.sh ..._4gpu.py 4`


@dataclass(frozen=True)
class _Official:
    depth: int
    stacked_convs: int  # the box tower has this many convs, the class tower one fewer
    gn: bool  # GN in the head towers (norm_cfg default) or none (norm_cfg=None)
    fast: bool  # ssd_flag: 544x544, Fast NMS, score_thr 0.1
    rescoring: bool = False  # SipMask++: mask re-scoring branch and DCN in res3-res5
    imgs_per_gpu: int = 4
    repeat: int = 1  # RepeatDataset times
    steps: tuple[int, int] = (8, 11)  # epochs
    epochs: int = 12
    multiscale: bool = False  # train img_scale [(1333, 800), (1333, 640)]: short side uniform in 640..800


_OFFICIAL = {
    "sipmask_r50_caffe_fpn_gn_1x": _Official(50, 4, True, False),
    "sipmask_r50_caffe_fpn_gn_ms_2x": _Official(50, 4, True, False, steps=(20, 23), epochs=24, multiscale=True),
    "sipmask_r101_caffe_fpn_gn_ms_4x": _Official(101, 4, True, False, imgs_per_gpu=2, steps=(40, 46), epochs=48,
                                                 multiscale=True),
    "sipmask_r50_caffe_fpn_ssd_6x": _Official(50, 2, False, True, imgs_per_gpu=8, repeat=3, steps=(20, 23), epochs=24),
    "sipmask_r50_caffe_fpn_ssd_gn_10x": _Official(50, 2, True, True, imgs_per_gpu=8, repeat=5, steps=(20, 23),
                                                  epochs=24),
    "sipmask_r101_caffe_fpn_ssd_6x": _Official(101, 2, False, True, imgs_per_gpu=8, repeat=3, steps=(20, 23),
                                               epochs=24),
    "sipmask_r101_caffe_fpn_ssd_gn_10x": _Official(101, 2, True, True, imgs_per_gpu=8, repeat=5, steps=(20, 23),
                                                   epochs=24),
    "sipmask++_r101_caffe_fpn_ssd_6x": _Official(101, 2, False, True, True, imgs_per_gpu=8, repeat=3, steps=(20, 23),
                                                 epochs=24),
    "sipmask++_r101_caffe_fpn_ssd_gn_10x": _Official(101, 2, True, True, True, imgs_per_gpu=8, repeat=5,
                                                     steps=(20, 23), epochs=24),
}


def _solver(o: _Official) -> SolverConfig:
    """The official schedule: SGD lr 0.01, weight decay 1e-4 on every parameter (norms included: mmdetection
    has no norm exception), 500 warmup iterations from 1/3, x0.1 at the step epochs."""
    batch = NUM_GPUS * o.imgs_per_gpu
    per_epoch = math.ceil(COCO_TRAIN_IMAGES * o.repeat / batch)
    return SolverConfig(ims_per_batch=batch, base_lr=0.01, weight_decay=1e-4, weight_decay_norm=1e-4,
                        max_iter=o.epochs * per_epoch, steps=tuple(s * per_epoch for s in o.steps),
                        warmup_iters=500, warmup_factor=1 / 3)


def _build(name: str) -> SipMaskConfig:
    o = _OFFICIAL[name]
    cfg = SipMaskConfig(name=name)
    cfg.backbone.depth = o.depth
    cfg.fcos.num_convs = o.stacked_convs
    cfg.sipmask.norm = "GN" if o.gn else "none"
    cfg.solver = _solver(o)
    if o.multiscale:
        cfg.input.min_size_train = tuple(range(640, 801))
    else:
        cfg.input.min_size_train = (800,)
    if not o.fast:
        return cfg
    cfg.fcos.score_threshold = 0.1
    cfg.sipmask.nms = "fast"
    cfg.input.resize = "mmcv_resize"
    cfg.input.min_size_test = cfg.input.max_size_test = 544
    # The SSD augmentation (photometric distortion, expand, min-IoU crop) is not reproduced.
    cfg.input.min_size_train = (576,)
    cfg.input.max_size_train = 576
    if o.rescoring:
        cfg.sipmask.rescoring = True
        cfg.backbone.dcn_stages = (3, 4, 5)
    return cfg


SIPMASK_PRESETS = {name: (lambda n=name: _build(n)) for name in _OFFICIAL}
