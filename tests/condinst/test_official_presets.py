"""Every preset named after an official config file builds that file's network and uses its test settings.

The numbers come from the official files, read at these commits, and NOT from our builders:
  AD  = aim-uofa/AdelaiDet @ 3672122 (configs/CondInst/*.yaml, adet/config/defaults.py, adet/modeling/...)
  D2  = facebookresearch/detectron2 @ 02b5c4e2 (detectron2/config/defaults.py, detectron2/modeling/...)
  MM  = open-mmlab/mmdetection 3.x (configs/condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py = MMC,
        configs/common/ms-poly-90k_coco-instance.py = MMB, mmdet/models/dense_heads/condinst_head.py)
  SM  = JialeCao001/SipMask @ bc63fa9 (SipMask-mmdetection/configs/sipmask/<name>.py, and
        SipMask-mmdetection/mmdet/models/anchor_heads/sipmask_head.py = SMH)
Each test builds the official checkpoint's key set and shapes from these tables with the independent
functions of tests/official_layouts.py (checked against the key dumps of real official models in
shared/reference/parity when present), converts it with our loader's renaming and compares it with the
preset's model.

What the presets cannot express (our config has no field for it), so not pinned here:
  * SipMask high-accuracy configs warm up 'constant' (LR x 1/3 for 500 iterations; SM gn_1x.py:118), ours linearly;
    their biases get 2x LR and no weight decay (gn_1x.py:113 paramwise_options), ours the base LR and decay;
  * SipMask real-time configs train on 576x576 squashed images with photometric distortion, expand and min-IoU
    crop (ssd_6x.py:67-82); our training keeps the ratio (short and long side <= 576) without them;
  * mmdetection's CondInst trains the backbone BN affine parameters with frozen statistics (MMC:19-20,
    requires_grad=True, norm_eval=True); ours are FrozenBN;
  * AdelaiDet's BiFPN uses SyncBN (MS_*_BiFPN_*.yaml:11), ours BatchNorm (same keys, same in eval).
"""
from __future__ import annotations

import json
import math
import reprlib

import pytest
import torch

from condinst.checkpoint import IGNORED_KEYS, split_checkpoint
from condinst.arch import get_preset
from condinst.config import PRESETS
from condinst.model import build_model
from condinst.predictor import load_model
from condinst.sipmask.presets import SIPMASK_PRESETS
from official_layouts import adelaidet_keys, dynamic_params, mmdet_condinst_keys, sipmask_keys
from testutils import PARITY

# ---- the official numbers ---------------------------------------------------------------------------

STEM, RES2, WIDTH = 64, 256, 64  # D2 config/defaults.py:507, :506, :495 (torchvision / mmdet ResNet alike)
CLASSES = 80  # AD defaults.py:21 NUM_CLASSES; MMC:34 num_classes; SM <name>.py:24 (:26 in sipmask++_*) num_classes=81 with background

# AdelaiDet: Base-CondInst.yaml + adet/config/defaults.py + detectron2/config/defaults.py.
ADELAIDET = dict(
    fpn_channels=256,  # D2 defaults.py:150 FPN.OUT_CHANNELS
    bifpn_channels=160, bifpn_repeats=6,  # MS_R_*_BiFPN_*.yaml:10 OUT_CHANNELS 160; AD defaults.py:281 NUM_REPEATS
    cls_convs=4, box_convs=4, share_convs=0,  # AD defaults.py:62-64 NUM_CLS/BOX/SHARE_CONVS
    mask_branch_channels=128, mask_branch_out=8, mask_branch_convs=4,  # AD defaults.py:246, :244, :248
    dyn_layers=3, dyn_channels=8, rel_coords=True,  # AD defaults.py:239, :238, :241 DISABLE_REL_COORDS False
)
ADELAIDET_TEST = {
    "fcos.score_threshold": 0.05,  # AD defaults.py:26 INFERENCE_TH_TEST
    "fcos.nms_threshold": 0.6,  # AD defaults.py:27 NMS_TH
    "fcos.pre_nms_topk": 1000,  # AD defaults.py:29 PRE_NMS_TOPK_TEST
    "fcos.post_nms_topk": 100,  # AD defaults.py:31 POST_NMS_TOPK_TEST
    "fcos.thresh_with_ctr": True,  # AD Base-CondInst.yaml:13 THRESH_WITH_CTR
    "fcos.strides": (8, 16, 32, 64, 128),  # AD defaults.py:23 FPN_STRIDES
    "fcos.sizes_of_interest": (64, 128, 256, 512),  # AD defaults.py:57 SIZES_OF_INTEREST
    "fcos.use_scale": True,  # AD defaults.py:34 USE_SCALE
    "mask_head.mask_out_stride": 4,  # AD defaults.py:228 MASK_OUT_STRIDE
    "mask_head.mask_threshold": 0.5,  # AD modeling/condinst/condinst.py:324 postprocess(mask_threshold=0.5)
    "mask_head.max_proposals": 500,  # AD Base-CondInst.yaml:16 MAX_PROPOSALS
    "mask_head.topk_proposals_per_im": -1,  # AD defaults.py:235
    "input.min_size_test": 800, "input.max_size_test": 1333,  # D2 defaults.py:63, :65
    "input.min_size_train": (640, 672, 704, 736, 768, 800),  # AD Base-CondInst.yaml:26
    "input.max_size_train": 1333,  # D2 defaults.py:61
    "input.format": "BGR",  # D2 defaults.py:84
    "input.pixel_mean": (103.530, 116.280, 123.675), "input.pixel_std": (1.0, 1.0, 1.0),  # D2 defaults.py:42, :46
    "backbone.style": "caffe",  # D2 defaults.py:499 STRIDE_IN_1X1 True (MSRA weights)
    "backbone.norm": "FrozenBN", "backbone.freeze_at": 2,  # D2 defaults.py:491, :139
    "solver.ims_per_batch": 16, "solver.base_lr": 0.01,  # AD Base-CondInst.yaml:21, :22
    "solver.warmup_iters": 1000, "solver.warmup_factor": 0.001,  # D2 defaults.py:550, :549
    "solver.weight_decay": 1e-4, "solver.weight_decay_norm": 0.0,  # D2 defaults.py:538, :541
    "solver.checkpoint_period": 5000,  # D2 defaults.py:556
}
_1X = {"solver.max_iter": 90000, "solver.steps": (60000, 80000)}  # AD Base-CondInst.yaml:24, :23
_3X = {"solver.max_iter": 270000, "solver.steps": (210000, 250000)}  # AD MS_*_3x*.yaml SOLVER block (:7-8 .. :16-17)
# name -> (RESNETS.DEPTH, BiFPN backbone, SEMANTIC_LOSS_ON, schedule), each from AD configs/CondInst/<name>.yaml
ADELAIDET_FILES = {
    "MS_R_50_1x": (50, False, False, _1X),  # MS_R_50_1x.yaml:5
    "MS_R_101_1x": (101, False, False, _1X),  # MS_R_101_1x.yaml:5
    "MS_R_50_3x": (50, False, False, _3X),  # MS_R_50_3x.yaml:5, :7-8
    "MS_R_50_3x_sem": (50, False, True, _3X),  # MS_R_50_3x_sem.yaml:5, :8, :10-11
    "MS_R_101_3x": (101, False, False, _3X),  # MS_R_101_3x.yaml:5, :7-8
    "MS_R_101_3x_sem": (101, False, True, _3X),  # MS_R_101_3x_sem.yaml:5, :8, :10-11
    "MS_R_50_BiFPN_1x": (50, True, False, _1X),  # MS_R_50_BiFPN_1x.yaml:5 (BiFPN backbone), :7
    "MS_R_50_BiFPN_3x": (50, True, False, _3X),  # MS_R_50_BiFPN_3x.yaml:5, :7, :13-14
    "MS_R_50_BiFPN_3x_sem": (50, True, True, _3X),  # MS_R_50_BiFPN_3x_sem.yaml:5, :7, :14, :16-17
    "MS_R_101_BiFPN_3x": (101, True, False, _3X),  # MS_R_101_BiFPN_3x.yaml:5, :7, :13-14
    "MS_R_101_BiFPN_3x_sem": (101, True, True, _3X),  # MS_R_101_BiFPN_3x_sem.yaml:5, :7, :14, :16-17
}

MMDET_NAME = "mmdet_condinst_r50_fpn_ms_poly_90k"
MMDET = dict(depth=50, fpn_channels=256, stacked_convs=4, mask_branch_channels=128, mask_branch_out=8,
             mask_branch_convs=4, num_params=169)  # MMC:15, :26, :36, :62, :65, :67, :33
MMDET_TEST = {
    "fcos.score_threshold": 0.05, "fcos.nms_threshold": 0.6,  # MMC:79 score_thr, :80 iou_threshold
    "fcos.pre_nms_topk": 1000, "fcos.post_nms_topk": 100,  # MMC:77 nms_pre, :81 max_per_img
    "fcos.thresh_with_ctr": False, "fcos.score_mode": "product",  # MM fcos_head.py: score_thr on cls, x centerness
    "fcos.strides": (8, 16, 32, 64, 128),  # MMC:38
    "mask_head.mask_threshold": 0.5, "mask_head.mask_out_stride": 4,  # MMC:82 mask_thr, :58
    "mask_head.max_proposals": 300, "mask_head.dice_eps": 5e-6,  # MMC:59 max_masks_to_train, :73 eps
    "input.min_size_test": 800, "input.max_size_test": 1333,  # MMB:39 Resize scale=(1333, 800), keep_ratio
    "input.min_size_train": (640, 672, 704, 736, 768, 800), "input.max_size_train": 1333,  # MMB:27-28
    "input.format": "RGB",  # MMC:10 bgr_to_rgb=True
    "input.pixel_mean": (123.675, 116.28, 103.53), "input.pixel_std": (58.395, 57.12, 57.375),  # MMC:8, :9
    "backbone.style": "pytorch", "backbone.freeze_at": 2,  # MMC:22, :18 frozen_stages=1 (stem + layer1)
    "solver.ims_per_batch": 16,  # MMB:52 batch_size=2 x 8 GPUs (MMB:114-115 base_batch_size=16)
    "solver.base_lr": 0.01,  # MMC:85
    "solver.max_iter": 90000, "solver.steps": (60000, 80000),  # MMB:87, :103
    "solver.warmup_iters": 1000, "solver.warmup_factor": 0.001,  # MMB:96-97 LinearLR start_factor, end
    "solver.weight_decay": 1e-4, "solver.weight_decay_norm": 1e-4,  # MMB:110, no paramwise_cfg: norms decay too
    "solver.checkpoint_period": 10000,  # MMB:117
}


def _sipmask_test(fast: bool) -> dict:
    return {
        "fcos.score_threshold": 0.1 if fast else 0.05,  # SM ssd: score_thr=0.1 (e.g. ..._ssd_6x.py:56); gn: :54
        "fcos.nms_threshold": 0.5,  # SM <name>.py iou_thr=0.5 (gn_1x.py:55, ssd_6x.py:57)
        "fcos.pre_nms_topk": 1000, "fcos.post_nms_topk": 100,  # SM nms_pre=1000 / max_per_img=100 (gn_1x.py:52, :56)
        "sipmask.nms": "fast" if fast else "multiclass",  # SM ssd_flag=True (ssd_6x.py:27); SMH:594-605
        "sipmask.fast_nms_top_k": 200,  # SMH:868 fast_nms(top_k=200)
        "sipmask.mask_threshold": 0.4,  # SMH:633 masks.gt_(0.4)
        "sipmask.num_bases": 32,  # SMH:192 self.nc = 32
        "input.resize": "mmcv_resize" if fast else "mmcv_rescale",  # SM test Resize keep_ratio False / True
        "input.min_size_test": 544 if fast else 800,  # SM test img_scale (544, 544) / (1333, 800)
        "input.max_size_test": 544 if fast else 1333,
        "input.format": "BGR", "input.pixel_mean": (102.9801, 115.9465, 122.7717),  # SM img_norm_cfg (gn_1x.py:61)
        "input.pixel_std": (1.0, 1.0, 1.0),
        "backbone.style": "caffe", "backbone.freeze_at": 2,  # SM style='caffe', frozen_stages=1 (gn_1x.py:12, :10)
        "backbone.norm": "FrozenBN",  # SM norm_cfg=dict(type='BN', requires_grad=False) (gn_1x.py:11)
    }


# name -> (depth, stacked_convs, GN towers, ssd_flag, SipMask++ (DCN res3-5 + re-scoring), imgs/GPU,
#          RepeatDataset times, step epochs, total epochs, train short sides), from SM configs/sipmask/<name>.py
SIPMASK_FILES = {
    # gn_1x.py:7 depth, :26 stacked_convs=4, :65 img_scale=(1333, 800), :89 imgs_per_gpu=4, :121 step, :132 epochs
    "sipmask_r50_caffe_fpn_gn_1x": (50, 4, True, False, False, 4, 1, (8, 11), 12, (800,)),
    # gn_ms_2x.py:7, :26, :65 img_scale=[(1333, 800), (1333, 640)] (mmcv 'range': 640..800), :89, :121, :132
    "sipmask_r50_caffe_fpn_gn_ms_2x": (50, 4, True, False, False, 4, 1, (20, 23), 24, tuple(range(640, 801))),
    # gn_ms_4x.py:7, :26, :65, :89 imgs_per_gpu=2, :121 step=[40, 46], :132 total_epochs=48
    "sipmask_r101_caffe_fpn_gn_ms_4x": (101, 4, True, False, False, 2, 1, (40, 46), 48, tuple(range(640, 801))),
    # ssd_6x.py:7, :26 stacked_convs=2, :28 norm_cfg=None, :82 (576, 576), :102 imgs_per_gpu=8, :106 times=3
    "sipmask_r50_caffe_fpn_ssd_6x": (50, 2, False, True, False, 8, 3, (20, 23), 24, (576,)),
    # ssd_gn_10x.py:7, :26 (norm_cfg default GN), :81, :101, :105 times=5, :131 step, :142 epochs
    "sipmask_r50_caffe_fpn_ssd_gn_10x": (50, 2, True, True, False, 8, 5, (20, 23), 24, (576,)),
    "sipmask_r101_caffe_fpn_ssd_6x": (101, 2, False, True, False, 8, 3, (20, 23), 24, (576,)),  # :7, :26, :28, :106
    "sipmask_r101_caffe_fpn_ssd_gn_10x": (101, 2, True, True, False, 8, 5, (20, 23), 24, (576,)),  # :7, :26, :105
    # sipmask++_..._ssd_6x.py:7, :14 stage_with_dcn=(False, True, True, True), :28, :30 norm_cfg=None, :31, :109
    "sipmask++_r101_caffe_fpn_ssd_6x": (101, 2, False, True, True, 8, 3, (20, 23), 24, (576,)),
    # sipmask++_..._ssd_gn_10x.py:7, :14, :28, :30 rescoring_flag, :108 times=5
    "sipmask++_r101_caffe_fpn_ssd_gn_10x": (101, 2, True, True, True, 8, 5, (20, 23), 24, (576,)),
}
SIPMASK_GPUS = 4  # SM SipMask-mmdetection README.md:71 (dist_train.sh ..._4gpu.py 4)
COCO_TRAIN_WITH_ANNOTATIONS = 117266  # train2017 images mmdetection keeps (it drops those without annotations)


def sipmask_settings(name: str) -> dict:
    depth, _, _, fast, _, per_gpu, times, steps, epochs, sizes = SIPMASK_FILES[name]
    batch = SIPMASK_GPUS * per_gpu
    per_epoch = math.ceil(COCO_TRAIN_WITH_ANNOTATIONS * times / batch)
    return {**_sipmask_test(fast), "backbone.depth": depth,
            "input.min_size_train": sizes, "input.max_size_train": 576 if fast else 1333,  # SM train img_scale
            "solver.ims_per_batch": batch,
            "solver.base_lr": 0.01, "solver.weight_decay": 1e-4,  # SM optimizer (gn_1x.py:110-112, ssd_6x.py:124)
            "solver.weight_decay_norm": 1e-4,  # SM mmdet/core/optimizer/builder.py:63 norm_decay_mult default 1
            "solver.max_iter": epochs * per_epoch, "solver.steps": tuple(s * per_epoch for s in steps),
            "solver.warmup_iters": 500, "solver.warmup_factor": 1 / 3}  # SM lr_config (gn_1x.py:119-120, ssd_6x.py:130-131)


def adelaidet_settings(name: str) -> dict:
    depth, bifpn, sem, schedule = ADELAIDET_FILES[name]
    return {**ADELAIDET_TEST, **schedule, "backbone.depth": depth, "neck.kind": "bifpn" if bifpn else "fpn",
            "mask_branch.semantic_loss_on": sem}


def adelaidet_layout(name: str, **shrink) -> dict:
    depth, bifpn, sem, _ = ADELAIDET_FILES[name]
    a = ADELAIDET
    return adelaidet_keys(
        depth=depth, bifpn=bifpn, sem=sem, num_classes=CLASSES,
        channels=shrink.pop("channels", a["bifpn_channels"] if bifpn else a["fpn_channels"]),
        repeats=shrink.pop("repeats", a["bifpn_repeats"]),
        towers={"cls": a["cls_convs"], "bbox": a["box_convs"], "share": a["share_convs"]},
        mask_channels=shrink.pop("mask_channels", a["mask_branch_channels"]), mask_out=a["mask_branch_out"],
        mask_convs=a["mask_branch_convs"],
        num_params=dynamic_params(a["mask_branch_out"], a["rel_coords"], a["dyn_channels"], a["dyn_layers"]),
        stem=shrink.pop("stem", STEM), res2=shrink.pop("res2", RES2), width=shrink.pop("width", WIDTH))


def sipmask_layout(name: str) -> dict:
    depth, stacked, gn, _, plus, *_ = SIPMASK_FILES[name]
    return sipmask_keys(depth=depth, stacked_convs=stacked, gn=gn, plus=plus, num_classes=CLASSES)


def mmdet_layout() -> dict:
    m = MMDET
    return mmdet_condinst_keys(depth=m["depth"], channels=m["fpn_channels"], stacked_convs=m["stacked_convs"],
                               num_classes=CLASSES, num_params=m["num_params"], mask_channels=m["mask_branch_channels"],
                               mask_out=m["mask_branch_out"], mask_convs=m["mask_branch_convs"])


OFFICIAL_KEYS = {**{n: (lambda n=n: adelaidet_layout(n)) for n in ADELAIDET_FILES}, MMDET_NAME: mmdet_layout,
                 **{n: (lambda n=n: sipmask_layout(n)) for n in SIPMASK_FILES}}
OFFICIAL_SETTINGS = {**{n: (lambda n=n: adelaidet_settings(n)) for n in ADELAIDET_FILES},
                     MMDET_NAME: lambda: {**MMDET_TEST, "backbone.depth": 50, "neck.kind": "fpn"},
                     **{n: (lambda n=n: sipmask_settings(n)) for n in SIPMASK_FILES}}
WRAPPER = {MMDET_NAME: "state_dict", **{n: "state_dict" for n in SIPMASK_FILES}}  # AdelaiDet: {"model": ...}


# ---- the key functions reproduce real official dumps -------------------------------------------------------

def _dump(path) -> dict:
    if not path.is_file():
        pytest.skip(f"{path} not found (set CONDINST_SHARED)")
    return {e["key"]: tuple(e["shape"]) for e in json.loads(path.read_text())}


def test_key_functions_reproduce_the_official_dumps():
    """r50_full_keys.json is the real MS_R_50_1x; tiny / tiny_sem / bifpn_tiny shrink its widths (their
    README); sipmask_fast_544/keys.json is the real sipmask_r50_caffe_fpn_ssd_6x."""
    assert adelaidet_layout("MS_R_50_1x") == _dump(PARITY / "r50_full_keys.json")
    tiny = dict(stem=16, res2=64, width=16, channels=32, mask_channels=16)
    assert adelaidet_layout("MS_R_50_1x", **tiny) == _dump(PARITY / "tiny" / "keys.json")
    assert adelaidet_layout("MS_R_50_3x_sem", **tiny) == _dump(PARITY / "tiny_sem" / "keys.json")
    assert adelaidet_layout("MS_R_50_BiFPN_1x", repeats=2, **tiny) == _dump(PARITY / "bifpn_tiny" / "keys.json")
    assert sipmask_layout("sipmask_r50_caffe_fpn_ssd_6x") == _dump(PARITY / "sipmask_fast_544" / "keys.json")


# ---- every preset against its official file -----------------------------------------------------------------

ALL = [*ADELAIDET_FILES, MMDET_NAME, *SIPMASK_FILES]


def test_every_official_file_has_its_preset_and_no_other_preset_claims_one():
    assert set(ALL) == set(PRESETS) | set(SIPMASK_PRESETS)


def _official_checkpoint(name: str, device: str = "meta") -> dict:
    """The official checkpoint layout of `name` (values: each tensor filled with its index, on `device`)."""
    sd = {k: torch.full(shape, float(i % 1000), device=device) for i, (k, shape) in
          enumerate(OFFICIAL_KEYS[name]().items())}
    return {WRAPPER.get(name, "model"): sd}


@pytest.mark.parametrize("name", ALL)
def test_preset_builds_the_official_state_dict(name):
    """The official key set, renamed by our loader, is exactly the preset model's, shape for shape."""
    converted, _, _ = split_checkpoint(_official_checkpoint(name))
    with torch.device("meta"):
        own = build_model(get_preset(name)).state_dict()
    ignorable = {k for k in converted if k in IGNORED_KEYS or k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own) - ignorable)
    assert not missing and not unexpected, f"missing from the official file: {missing[:6]}; not built: {unexpected[:6]}"
    shapes = [f"{k}: official {tuple(converted[k].shape)} vs ours {tuple(own[k].shape)}"
              for k in own if converted[k].shape != own[k].shape]
    assert not shapes, shapes[:6]


@pytest.mark.parametrize("name", ALL)
def test_preset_uses_the_official_settings(name):
    cfg = get_preset(name)
    wrong = {}
    for path, expected in OFFICIAL_SETTINGS[name]().items():
        value = cfg
        for part in path.split("."):
            value = getattr(value, part)
        ok = math.isclose(value, expected, rel_tol=1e-9) if isinstance(expected, float) else value == expected
        if not ok:
            wrong[path] = f"ours {reprlib.repr(value)} vs official {reprlib.repr(expected)}"
    assert not wrong, f"{name}: {wrong}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "sipmask_r50_caffe_fpn_gn_1x" else pytest.mark.slow)
                                  for n in ALL])
def test_official_checkpoint_loads_with_config_named_after_its_file(name, tmp_path):
    """`--config <preset>` with a checkpoint of the official key set loads strictly through the real loader."""
    path = tmp_path / f"{name}.pth"
    ckpt = _official_checkpoint(name, device="cpu")
    torch.save(ckpt, path)
    model, cfg = load_model(path, name)
    assert cfg.name == name
    sd = next(iter(ckpt.values()))
    probe = "bbox_head.sip_cof.weight" if name in SIPMASK_FILES else (
        "bbox_head.controller.weight" if name == MMDET_NAME else "controller.weight")
    ours = "controller.weight" if name == MMDET_NAME else probe
    assert torch.equal(model.state_dict()[ours], sd[probe])
