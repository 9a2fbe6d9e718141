"""Official SipMask checkpoint layouts of every model family load strictly, are recognised from their
keys without a config, and run end to end (Fast NMS, class-wise +1 NMS, SipMask++'s DCN backbone and
mask re-scoring); our own checkpoint format keeps the SipMask config."""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from condinst.checkpoint import save_checkpoint
from condinst.arch import get_preset
from condinst.config_sources import load_config
from condinst.model import build_model
from condinst.predictor import Predictor, load_model
from condinst.sipmask.config import SipMaskConfig


def official_key(key: str) -> str:
    """Our key -> the official mmdetection v1 SipMask key (the inverse of the loader's renaming)."""
    rules = [
        (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.bn1."),
        (r"^backbone\.bottom_up\.stem\.conv1\.", "backbone.conv1."),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.1."),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.0."),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}."),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}."),
        (r"^backbone\.fpn_lateral(\d)\.", lambda m: f"neck.lateral_convs.{int(m[1]) - 3}.conv."),
        (r"^backbone\.fpn_output(\d)\.", lambda m: f"neck.fpn_convs.{int(m[1]) - 3}.conv."),
        (r"^backbone\.top_block\.p6\.", "neck.fpn_convs.3.conv."),
        (r"^backbone\.top_block\.p7\.", "neck.fpn_convs.4.conv."),
        (r"^bbox_head\.(cls_convs|reg_convs)\.(\d+)\.norm\.", r"bbox_head.\1.\2.gn."),
        (r"^bbox_head\.(cls_convs|reg_convs)\.(\d+)\.", r"bbox_head.\1.\2.conv."),
        (r"^bbox_head\.rescoring\.convs_scoring\.(\d+)\.", r"bbox_head.convs_scoring.\1.conv."),
        (r"^bbox_head\.rescoring\.mask_scoring\.", "bbox_head.mask_scoring."),
    ]
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def official_checkpoint(cfg: SipMaskConfig) -> dict:
    """An official-layout checkpoint of `cfg`'s architecture with the golden data's weight recipe
    (crc32-seeded per key), BN `num_batches_tracked` counters included, 0-dim FCOS scales."""
    sd = {}
    own = build_model(cfg).state_dict()
    shapes = {official_key(k): list(v.shape) for k, v in own.items()}
    for ours, tensor in own.items():
        key = official_key(ours)
        shape = [] if key.endswith(".scale") else list(tensor.shape)
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        n, u = torch.randn(shape, generator=g), torch.rand(shape, generator=g)
        base, name = key.rsplit(".", 1)
        conv = len(shapes.get(base + ".weight", [])) == 4
        if name == "scale":
            v = 1 + 0.1 * n
        elif conv and name == "weight":
            gain = 1 / 64 if key == "backbone.conv1.weight" else 0.05 if key.endswith("conv_offset.weight") else 1.0
            v = n * gain / math.sqrt(shape[1] * shape[2] * shape[3])
        elif conv and name == "bias":
            v = {"fcos_cls": -5 + 2 * n, "fcos_reg": 2 + 0.1 * n, "fcos_centerness": 1 + 0.1 * n}.get(base.split(".")[-1], 0.1 * n)
        elif name == "weight":
            v = (0.5 if key.endswith("bn3.weight") else 1.0) + 0.1 * n
        elif name == "running_var":
            v = 0.5 + u
        else:
            v = 0.1 * n
        sd[key] = v.float()
        if key.startswith("backbone.") and name == "running_var":
            sd[base + ".num_batches_tracked"] = torch.tensor(0)
    return {"meta": {"mmdet_version": "1.1.0"}, "state_dict": sd}


@pytest.mark.parametrize("preset", ["sipmask_r50_caffe_fpn_gn_1x", "sipmask_r50_caffe_fpn_ssd_gn_10x",
                                    "sipmask++_r101_caffe_fpn_ssd_gn_10x"])
def test_official_layouts_are_recognised_and_load_strictly(preset, tmp_path):
    cfg = get_preset(preset)
    path = tmp_path / "official.pth"
    torch.save(official_checkpoint(cfg), path)
    inferred = load_config(path)  # the one front door: recognised from the keys
    assert isinstance(inferred, SipMaskConfig) and inferred.name == preset
    assert len(inferred.class_names) == 80  # COCO names come with 80 classes
    assert replace(inferred, category_ids=(), class_names=()) == cfg
    model, loaded = load_model(path)
    assert loaded.name == preset
    ref = official_checkpoint(cfg)["state_dict"]
    own = model.state_dict()
    assert torch.equal(own["bbox_head.sip_cof.weight"], ref["bbox_head.sip_cof.weight"])
    assert torch.equal(own["bbox_head.scales.2.scale"], ref["bbox_head.scales.2.scale"].reshape(1))
    if cfg.backbone.dcn_stages:
        assert torch.equal(own["backbone.bottom_up.res4.3.conv2.conv_offset.weight"],
                           ref["backbone.layer3.3.conv2.conv_offset.weight"])
        assert torch.equal(own["bbox_head.rescoring.convs_scoring.5.weight"], ref["bbox_head.convs_scoring.5.conv.weight"])


def test_a_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    ckpt = official_checkpoint(get_preset("sipmask_r50_caffe_fpn_ssd_6x"))
    del ckpt["state_dict"]["bbox_head.sip_mask_lat0.bias"]
    torch.save(ckpt, tmp_path / "broken.pth")
    from condinst.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="sip_mask_lat0.bias"):
        load_model(tmp_path / "broken.pth", "sipmask_r50_caffe_fpn_ssd_6x")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["sipmask_r50_caffe_fpn_gn_1x", "sipmask++_r101_caffe_fpn_ssd_gn_10x"])
def test_models_run_end_to_end_and_round_trip_through_our_format(preset, tmp_path):
    """Class-wise +1 NMS (high-accuracy) and DCN + re-scoring (SipMask++) give sorted, masked results;
    saved in our format and loaded again, the same results come out."""
    cfg = get_preset(preset)
    path = tmp_path / "official.pth"
    torch.save(official_checkpoint(cfg), path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    predictor = Predictor.from_weights(path, min_size=320 if "gn_1x" in preset else None,
                                       max_size=533 if "gn_1x" in preset else None, optimize=False)
    result = predictor(image)[0]
    assert result.image_size == (240, 320) and 0 < len(result) <= 100
    assert torch.all(result.scores[:-1] >= result.scores[1:])
    assert result.masks.shape == (len(result), 240, 320) and result.masks.any()
    assert (predictor.model.bbox_head.rescoring is not None) == cfg.sipmask.rescoring
    saved = save_checkpoint(tmp_path / "ours.pth", predictor.model, predictor.cfg)
    again = Predictor.from_weights(saved, optimize=False)
    assert again.cfg == predictor.cfg
    other = again(image)[0]
    assert torch.equal(other.classes, result.classes) and torch.allclose(other.scores, result.scores)
    assert torch.equal(other.masks, result.masks)
