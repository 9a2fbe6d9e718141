"""Loading official (AdelaiDet, mmdetection) and our own checkpoints; presets and key layouts."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from condinst.checkpoint import CheckpointError, save_checkpoint
from condinst.arch import get_preset
from condinst.config import ConfigError, PRESETS
from condinst.model import CondInst
from condinst.predictor import Predictor, load_model
from testutils import official_recipe_state_dict, randomize_, tiny_config

# Official key counts (spec §4, with the two mask_head buffers) and parameter counts (R50, R101, BiFPN).
OFFICIAL_KEYS = {"MS_R_50_1x": 372, "MS_R_50_3x_sem": 386, "MS_R_101_3x": 627, "MS_R_101_3x_sem": 641,
                 "MS_R_50_BiFPN_1x": 719, "MS_R_50_BiFPN_3x_sem": 733, "MS_R_101_BiFPN_3x_sem": 988}
OFFICIAL_PARAMS = {"MS_R_50_1x": 34_111_179}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_with_official_key_count(name):
    with torch.device("meta"):
        model = CondInst(get_preset(name))
    keys = model.state_dict()
    if name in OFFICIAL_KEYS:
        assert len(keys) + 2 == OFFICIAL_KEYS[name]
    if name in OFFICIAL_PARAMS:
        assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    if "sem" in name:
        assert "mask_branch.logits.weight" in keys


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="MS_R_50_1x"):
        get_preset("MS_R_50_2x")


def test_r50_full_layout_every_key_maps_and_shapes_agree(parity_dir):
    keys = json.loads((parity_dir / "r50_full_keys.json").read_text())
    with torch.device("meta"):
        ours = CondInst(get_preset("MS_R_50_1x")).state_dict()
    official = {k["key"]: k["shape"] for k in keys}
    assert set(official) - set(ours) == {"mask_head._iter", "mask_head.sizes_of_interest"}
    assert set(ours) <= set(official)
    assert all(list(ours[k].shape) == official[k] for k in ours)


@pytest.fixture(scope="module")
def r50_official_file(parity_dir, tmp_path_factory):
    """A full-size MS_R_50_1x checkpoint in the detectron2 layout, rebuilt from the recipe."""
    keys = json.loads((parity_dir / "r50_full_keys.json").read_text())
    sd = official_recipe_state_dict(keys)
    path = tmp_path_factory.mktemp("r50") / "CondInst_MS_R_50_1x.pth"
    torch.save({"model": sd, "iteration": 89999}, path)
    return path, keys


def test_r50_official_checkpoint_loads_without_config(r50_official_file):
    path, keys = r50_official_file
    model, cfg = load_model(path)
    assert (cfg.backbone.depth, cfg.neck.kind, cfg.neck.out_channels, cfg.fcos.num_classes) == (50, "fpn", 256, 80)
    assert cfg.category_ids[-1] == 90 and cfg.class_names[0] == "person"
    sd = model.state_dict()
    for k in keys:
        if k["key"] in sd and k["dtype"] == "float32":
            assert sd[k["key"]].double().sum().item() == pytest.approx(k["sum"], rel=1e-6, abs=1e-6)
    # ... and with the preset named explicitly
    model2, _ = load_model(path, "MS_R_50_1x")
    assert torch.equal(model2.controller.weight, model.controller.weight)


def test_r50_official_checkpoint_refuses_other_presets(r50_official_file):
    path, _ = r50_official_file
    with pytest.raises(CheckpointError, match=r"res4\.6\.conv1\.weight|missing"):
        load_model(path, "MS_R_101_3x")
    with pytest.raises(CheckpointError, match="mask_branch.seg_head"):
        load_model(path, "MS_R_50_3x_sem")


def _tiny_official(tmp_path, wrap="model", prefix="", buffers=True):
    model = randomize_(CondInst(tiny_config()), seed=3)
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    if buffers:
        sd[prefix + "mask_head._iter"] = torch.zeros(1)
        sd[prefix + "mask_head.sizes_of_interest"] = torch.tensor([64, 128, 256, 512, 1024])
    path = tmp_path / "w.pth"
    torch.save({wrap: sd} if wrap else sd, path)
    return model, path


@pytest.mark.parametrize("wrap,prefix,buffers", [("model", "", True), (None, "", False), ("model", "module.", False)])
def test_adelaidet_layouts_load(tmp_path, wrap, prefix, buffers):
    model, path = _tiny_official(tmp_path, wrap, prefix, buffers)
    loaded, cfg = load_model(path)
    assert cfg.neck.out_channels == 32 and cfg.mask_branch.channels == 16
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def _to_mmdet(sd):
    """Our (detectron2) names -> mmdetection v3 names, written independently of the loader."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.(norm\.)?(\w+)$", k)
        if m:
            stage, block, conv, norm, leaf = m.groups()
            layer = f"backbone.layer{int(stage) - 1}.{block}."
            if conv == "shortcut":
                out[layer + ("downsample.1." if norm else "downsample.0.") + leaf] = v
            else:
                out[layer + (f"bn{conv[-1]}." if norm else f"{conv}.") + leaf] = v
            continue
        k2 = (k.replace("backbone.bottom_up.stem.conv1.norm.", "backbone.bn1.")
               .replace("backbone.bottom_up.stem.conv1.", "backbone.conv1."))
        k2 = re.sub(r"backbone\.fpn_lateral(\d)\.", lambda m: f"neck.lateral_convs.{int(m[1]) - 3}.conv.", k2)
        k2 = re.sub(r"backbone\.fpn_output(\d)\.", lambda m: f"neck.fpn_convs.{int(m[1]) - 3}.conv.", k2)
        k2 = k2.replace("backbone.top_block.p6.", "neck.fpn_convs.3.conv.").replace("backbone.top_block.p7.", "neck.fpn_convs.4.conv.")
        m = re.match(r"proposal_generator\.fcos_head\.(cls|bbox)_tower\.(\d+)\.(\w+)$", k2)
        if m:
            branch = "cls_convs" if m[1] == "cls" else "reg_convs"
            idx, kind = divmod(int(m[2]), 3)
            k2 = f"bbox_head.{branch}.{idx}.{'conv' if kind == 0 else 'gn'}.{m[3]}"
        k2 = (k2.replace("proposal_generator.fcos_head.cls_logits.", "bbox_head.conv_cls.")
                .replace("proposal_generator.fcos_head.bbox_pred.", "bbox_head.conv_reg.")
                .replace("proposal_generator.fcos_head.ctrness.", "bbox_head.conv_centerness.")
                .replace("proposal_generator.fcos_head.scales.", "bbox_head.scales.")
                .replace("controller.", "bbox_head.controller."))
        if k2.startswith("bbox_head.scales."):
            v = v.reshape(())  # mmcv Scale is 0-dim
        m = re.match(r"mask_branch\.refine\.(\d)\.(\d)\.(\w+)$", k2)
        if m:
            k2 = f"mask_head.mask_feature_head.convs_all_levels.{m[1]}.conv{m[1]}.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"
        m = re.match(r"mask_branch\.tower\.(\d)\.(\d)\.(\w+)$", k2)
        if m:
            k2 = f"mask_head.mask_feature_head.conv_branch.{m[1]}.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"
        m = re.match(r"mask_branch\.tower\.(\d)\.(weight|bias)$", k2)
        if m:
            k2 = f"mask_head.mask_feature_head.conv_pred.{m[2]}"
        out[k2] = v
    return out


def test_mmdetection_checkpoint_loads_with_mmdet_recipe(tmp_path):
    cfg = get_preset("mmdet_condinst_r50_fpn_ms_poly_90k")
    cfg.backbone.stem_out_channels, cfg.backbone.res2_out_channels, cfg.backbone.width_per_group = 16, 64, 16
    cfg.neck.out_channels, cfg.mask_branch.channels, cfg.input.min_size_test = 32, 16, 320
    model = randomize_(CondInst(cfg), seed=5)
    sd = _to_mmdet(model.state_dict())
    assert any(k.startswith("backbone.layer4.2.bn3") for k in sd) and "bbox_head.scales.0.scale" in sd
    sd["backbone.bn1.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "condinst_r50_fpn_ms-poly-90k_coco_instance.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 12}}, path)
    loaded, got = load_model(path)
    assert got.backbone.style == "pytorch" and got.input.format == "RGB"
    assert got.fcos.score_mode == "product" and not got.fcos.thresh_with_ctr
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    image = (np.random.default_rng(0).random((200, 260, 3)) * 255).astype(np.uint8)
    got.input.min_size_test = 320
    ours = Predictor(loaded, got)(image)[0]
    ref = Predictor(model, cfg)(image)[0]
    assert len(ours) == len(ref) and torch.equal(ours.masks, ref.masks)


def test_own_checkpoint_round_trip_keeps_config_and_classes(tmp_path):
    cfg = tiny_config(num_classes=3)
    cfg.class_names, cfg.category_ids = ("date", "fig", "hazelnut"), (1, 2, 5)
    cfg.mask_head.num_layers, cfg.mask_head.channels = 2, 12
    model = randomize_(CondInst(cfg), seed=1)
    path = save_checkpoint(tmp_path / "ours.pth", model, cfg, iteration=10)
    p = Predictor.from_weights(path)
    assert p.cfg.class_names == ("date", "fig", "hazelnut") and p.category_id(2) == 5
    assert p.cfg.mask_head.channels == 12
    assert torch.equal(p.model.controller.weight, model.controller.weight)
    assert not list(tmp_path.glob("*.tmp"))


def test_wrong_files_fail_clearly(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(text)
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_model(tmp_path / "missing.pth")
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, other)
    with pytest.raises(CheckpointError, match="not a CondInst checkpoint"):
        load_model(other)
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "hook": ConfigError("code")}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(evil)


def test_checkpoint_that_does_not_fit_names_keys_and_shapes(tmp_path):
    _, path = _tiny_official(tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_model(path, "MS_R_50_1x")
    assert "stem.conv1.weight: checkpoint (16, 3, 7, 7) vs model (64, 3, 7, 7)" in str(e.value)


def test_yaml_config_with_fixture_checkpoint_gives_parity(parity_dir):
    folder = parity_dir / "tiny"
    p = Predictor.from_weights(folder / "state_dict.pth", config=folder / "config.yaml")
    assert p.cfg.input.min_size_test == 320
    from condinst.preprocess import read_image

    result = p(read_image(folder / "input.png"))[0]
    ref = np.load(folder / "outputs.npz")
    assert np.array_equal(result.classes.numpy(), ref["pred_classes"])
    assert np.abs(result.scores.numpy() - ref["scores"]).max() < 1e-4


def test_optimized_model_matches_and_cannot_be_saved(tmp_path):
    cfg = tiny_config()
    model = randomize_(CondInst(cfg), seed=4).eval()
    image = (np.random.default_rng(1).random((150, 200, 3)) * 255).astype(np.uint8)
    ref = Predictor(model, cfg)(image)[0]
    path = save_checkpoint(tmp_path / "m.pth", model, cfg)
    fast = Predictor.from_weights(path)  # optimize=True by default
    assert fast.model.inference_optimized and fast.model.backbone.bottom_up.stem.conv1.norm is None
    got = fast(image)[0]
    assert torch.equal(got.classes, ref.classes) and torch.allclose(got.scores, ref.scores, atol=1e-5)
    with pytest.raises(CheckpointError, match="optimised for inference"):
        save_checkpoint(tmp_path / "again.pth", fast.model, fast.cfg)
