"""Official SipMask checkpoints (mmdetection v1, `{'meta', 'state_dict'}`): key renaming and the
architecture recognised from the keys and shapes.

Backbone and neck keys are renamed by CondInst's mmdetection rules (`condinst.mmdet_keys`);
the head keeps the official names except mmcv ConvModule's `conv.` (the conv itself here) and `gn.`
(its `norm`), and SipMask++'s re-scoring convs, which live under `bbox_head.rescoring.`.
"""
from __future__ import annotations

import re

import torch

from ..coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from ..errors import CheckpointError
from ..mmdet_keys import convert_mmdet_state_dict
from .config import SipMaskConfig
from .presets import SIPMASK_PRESETS

KIND = "sipmask-mmdet"
MARKER = "bbox_head.sip_cof.weight"


def is_sipmask_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return MARKER in sd


def convert_sipmask_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official SipMask state dict -> our key names (unknown keys kept, so a strict load names them)."""
    out = convert_mmdet_state_dict({k: v for k, v in sd.items() if not k.startswith("bbox_head.")})
    for key, value in sd.items():
        if not key.startswith("bbox_head."):
            continue
        new = re.sub(r"^bbox_head\.(convs_scoring|mask_scoring)\.", r"bbox_head.rescoring.\1.", key)
        new = re.sub(r"\.(cls_convs|reg_convs|convs_scoring)\.(\d+)\.conv\.", r".\1.\2.", new)
        new = re.sub(r"\.(cls_convs|reg_convs)\.(\d+)\.gn\.", r".\1.\2.norm.", new)
        if re.search(r"\.scales\.\d+\.scale$", new):
            value = value.reshape(1)
        out[new] = value
    return out


def infer_sipmask_config(sd: dict[str, torch.Tensor]) -> SipMaskConfig:
    """The official config a converted SipMask state dict belongs to, from its keys and shapes.

    The keys decide: depth (res4 blocks), head towers (2 box convs = real-time 544 model with Fast NMS;
    4 = high-accuracy 800 model), GN in the head, DCN stages, the re-scoring branch. Schedules (1x / ms 2x,
    6x / 10x) do not show in the weights: the first official config of that architecture is used.
    """
    res4 = {int(m[1]) for k in sd if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", k))}
    depth = {6: 50, 23: 101}.get(len(res4))
    if depth is None:
        raise CheckpointError(f"unsupported ResNet: res4 has {len(res4)} blocks (ResNet-50 has 6, -101 has 23)")
    reg_convs = len({k.split(".")[2] for k in sd if k.startswith("bbox_head.reg_convs.")})
    gn = "bbox_head.reg_convs.0.norm.weight" in sd
    rescoring = "bbox_head.rescoring.mask_scoring.weight" in sd
    offset_key = re.compile(r"backbone\.bottom_up\.res(\d)\.\d+\.conv2\.conv_offset\.")
    dcn = tuple(sorted({int(m[1]) for k in sd if (m := offset_key.match(k))}))
    if reg_convs == 2:
        name = f"sipmask{'++' if rescoring else ''}_r{depth}_caffe_fpn_ssd_{'gn_10x' if gn else '6x'}"
    else:
        name = "sipmask_r50_caffe_fpn_gn_1x" if depth == 50 else "sipmask_r101_caffe_fpn_gn_ms_4x"
    cfg = SIPMASK_PRESETS[name]() if name in SIPMASK_PRESETS else SIPMASK_PRESETS["sipmask_r50_caffe_fpn_gn_1x"]()
    cfg.name = name
    cfg.backbone.depth = depth
    cfg.backbone.dcn_stages = dcn
    cfg.fcos.num_convs = reg_convs
    cfg.sipmask.norm = "GN" if gn else "none"
    cfg.sipmask.rescoring = rescoring
    try:
        cfg.fcos.num_classes = sd["bbox_head.fcos_cls.weight"].shape[0]
        cfg.sipmask.num_bases = sd["bbox_head.sip_mask_lat.weight"].shape[0]
        cfg.neck.out_channels = sd["bbox_head.fcos_cls.weight"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"not a SipMask checkpoint: key {e.args[0]!r} is missing") from None
    if cfg.fcos.num_classes == len(COCO_CATEGORY_IDS):
        cfg.category_ids, cfg.class_names = COCO_CATEGORY_IDS, COCO_CLASS_NAMES
    return cfg.validate()
