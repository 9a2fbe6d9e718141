"""Tests of condinst.yaml_config: AdelaiDet/detectron2 YAML -> CondInstConfig."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from condinst.arch import get_preset
from condinst.config import CondInstConfig, ConfigError
from condinst.yaml_config import KEYS_FILE, config_from_yaml, config_from_yaml_dict, load_yaml_with_base

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARITY = SHARED / "reference" / "parity"
DUMPS = {v: PARITY / v / "config.yaml" for v in ("tiny", "tiny_sem", "bifpn_tiny")}


def _dump(variant: str) -> Path:
    path = DUMPS[variant]
    if not path.is_file():
        pytest.skip(f"shared reference data not available ({path})")
    return path


def _same_apart_from_name(a: CondInstConfig, b: CondInstConfig) -> None:
    a_d, b_d = dataclasses.asdict(a), dataclasses.asdict(b)
    a_d.pop("name")
    b_d.pop("name")
    for section in a_d:
        assert a_d[section] == b_d[section], section
    assert dataclasses.replace(a, name="x") == dataclasses.replace(b, name="x")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- full dumps ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny", "tiny_sem"])
def test_tiny_dumps(variant):
    cfg = config_from_yaml(_dump(variant))
    assert cfg.name == "config"
    assert cfg.backbone.depth == 50 and cfg.backbone.style == "caffe" and cfg.backbone.freeze_at == 2
    assert cfg.backbone.stem_out_channels == 16
    assert cfg.backbone.res2_out_channels == 64
    assert cfg.backbone.width_per_group == 16
    assert cfg.neck.kind == "fpn" and cfg.neck.out_channels == 32
    assert cfg.mask_branch.channels == 16 and cfg.mask_branch.out_channels == 8 and cfg.mask_branch.num_convs == 4
    assert cfg.mask_branch.semantic_loss_on is (variant == "tiny_sem")
    assert cfg.fcos.num_classes == 80 and cfg.fcos.num_convs == 4
    assert cfg.fcos.thresh_with_ctr is True and cfg.fcos.score_threshold == 0.05
    assert cfg.input.min_size_test == 320 and cfg.input.max_size_test == 1333
    assert cfg.input.format == "BGR" and cfg.input.pixel_mean == (103.53, 116.28, 123.675)
    assert cfg.mask_head.coords == "relative" and cfg.mask_head.max_proposals == 500
    assert cfg.num_gen_params == 169
    assert cfg.solver.clip_gradients == 0.0 and cfg.solver.steps == (60000, 80000)


def test_bifpn_dump():
    cfg = config_from_yaml(_dump("bifpn_tiny"))
    assert cfg.neck.kind == "bifpn"
    assert cfg.neck.out_channels == 32
    assert cfg.neck.bifpn_num_repeats == 2
    assert cfg.backbone.stem_out_channels == 16 and cfg.mask_branch.channels == 16
    assert cfg.input.min_size_test == 320 and cfg.mask_branch.semantic_loss_on is False


def test_dump_with_typo_is_rejected():
    data = yaml.safe_load(_dump("tiny").read_text())
    data["MODEL"]["FCOS"]["INFERENCE_TH_TES"] = data["MODEL"]["FCOS"].pop("INFERENCE_TH_TEST")
    hint = r"MODEL\.FCOS\.INFERENCE_TH_TES\b.*did you mean MODEL\.FCOS\.INFERENCE_TH_TEST"
    with pytest.raises(ConfigError, match=hint):
        config_from_yaml_dict(data)


def test_dump_unsupported_value_names_the_file(tmp_path):
    data = yaml.safe_load(_dump("tiny").read_text())
    data["MODEL"]["RESNETS"]["NUM_GROUPS"] = 32
    path = _write(tmp_path / "x101.yaml", yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"x101\.yaml.*MODEL\.RESNETS\.NUM_GROUPS"):
        config_from_yaml(path)


def test_key_file_covers_the_dumps():
    keys = KEYS_FILE.read_text().splitlines()
    assert keys == sorted(set(keys))
    assert "_BASE_" in keys and "MODEL.BiFPN.NUM_REPEATS" in keys and "MODEL.FCOS.INFERENCE_TH_TEST" in keys
    for variant in DUMPS:
        data = yaml.safe_load(_dump(variant).read_text())

        def walk(d, prefix=""):
            for k, v in d.items():
                assert prefix + k in keys
                if isinstance(v, dict):
                    walk(v, prefix + k + ".")

        walk(data)


# ---- official presets (synthetic files) -----------------------------------------------------

# The AdelaiDet Base-CondInst.yaml, as described in the spec (section 4).
BASE_CONDINST = """\
MODEL:
  META_ARCHITECTURE: "CondInst"
  MASK_ON: True
  BACKBONE:
    NAME: "build_fcos_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res3", "res4", "res5"]
  PROPOSAL_GENERATOR:
    NAME: "FCOS"
  FCOS:
    THRESH_WITH_CTR: True
    USE_SCALE: True
  CONDINST:
    MAX_PROPOSALS: 500
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.01
  STEPS: (60000, 80000)
  MAX_ITER: 90000
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
"""


def _preset_yaml(name: str) -> str:
    depth = 101 if "_101_" in name else 50
    weights = f"detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl"
    lines = ['_BASE_: "Base-CondInst.yaml"', "MODEL:", f'  WEIGHTS: "{weights}"']
    lines += ["  RESNETS:", f"    DEPTH: {depth}"]
    if "BiFPN" in name:
        lines += ["  BACKBONE:", '    NAME: "build_fcos_resnet_bifpn_backbone"']
        lines += ["  BiFPN:", '    IN_FEATURES: ["res3", "res4", "res5"]', "    OUT_CHANNELS: 160",
                  '    NORM: "SyncBN"']
    if name.endswith("_sem"):
        lines += ["  CONDINST:", "    MASK_BRANCH:", "      SEMANTIC_LOSS_ON: True"]
    if "_3x" in name:
        lines += ["SOLVER:", "  STEPS: (210000, 250000)", "  MAX_ITER: 270000"]
    lines += [f'OUTPUT_DIR: "output/condinst_{name}"']
    return "\n".join(lines) + "\n"


ADELAIDET_PRESETS = [
    "MS_R_50_1x",
    "MS_R_50_3x",
    "MS_R_50_3x_sem",
    "MS_R_101_3x",
    "MS_R_101_3x_sem",
    "MS_R_50_BiFPN_1x",
    "MS_R_50_BiFPN_3x",
    "MS_R_50_BiFPN_3x_sem",
    "MS_R_101_BiFPN_3x",
    "MS_R_101_BiFPN_3x_sem",
]


@pytest.mark.parametrize("name", ADELAIDET_PRESETS)
def test_preset_with_absent_base_matches_builtin(tmp_path, name):
    path = _write(tmp_path / f"{name}.yaml", _preset_yaml(name))
    assert not (tmp_path / "Base-CondInst.yaml").exists()
    cfg = config_from_yaml(path)
    assert cfg.name == name
    _same_apart_from_name(cfg, get_preset(name))


@pytest.mark.parametrize("name", ["MS_R_50_1x", "MS_R_50_3x_sem", "MS_R_50_BiFPN_1x"])
def test_preset_with_real_base_file_matches_builtin(tmp_path, name):
    _write(tmp_path / "Base-CondInst.yaml", BASE_CONDINST)
    path = _write(tmp_path / f"{name}.yaml", _preset_yaml(name))
    _same_apart_from_name(config_from_yaml(path), get_preset(name))


def test_preset_values():
    cfg = config_from_yaml_dict(yaml.safe_load(_preset_yaml("MS_R_50_BiFPN_3x_sem")), name="p")
    assert cfg.name == "p"
    assert (cfg.neck.kind, cfg.neck.out_channels, cfg.neck.bifpn_num_repeats) == ("bifpn", 160, 6)
    assert cfg.solver.steps == (210000, 250000) and cfg.solver.max_iter == 270000
    assert cfg.mask_branch.semantic_loss_on is True


def test_nested_base_chain(tmp_path):
    _write(tmp_path / "common" / "base.yaml", '_BASE_: "Base-CondInst.yaml"\nMODEL:\n  FCOS:\n    NUM_CLASSES: 3\n'
           "    NMS_TH: 0.5\n  RESNETS:\n    DEPTH: 101\nSOLVER:\n  STEPS: (100, 200)\n  MAX_ITER: 300\n")
    _write(tmp_path / "sub" / "mid.yaml", "_BASE_: ../common/base.yaml\nMODEL:\n  FCOS:\n    NUM_CLASSES: 5\n"
           "  CONDINST:\n    MASK_HEAD:\n      DISABLE_REL_COORDS: True\nINPUT:\n  MIN_SIZE_TEST: 512\n")
    top = _write(tmp_path / "top.yaml", "_BASE_: sub/mid.yaml\nMODEL:\n  FCOS:\n    INFERENCE_TH_TEST: 0.3\n"
                 "SOLVER:\n  BASE_LR: 1e-4\n")
    merged = load_yaml_with_base(top)
    assert "_BASE_" not in merged and merged["MODEL"]["FCOS"] == {
        "NUM_CLASSES": 5, "NMS_TH": 0.5, "INFERENCE_TH_TEST": 0.3}
    cfg = config_from_yaml(top)
    assert cfg.name == "top"
    assert cfg.fcos.num_classes == 5  # mid overrides base
    assert cfg.fcos.nms_threshold == 0.5  # from base
    assert cfg.fcos.score_threshold == 0.3  # from top
    assert cfg.backbone.depth == 101
    assert cfg.solver.steps == (100, 200) and cfg.solver.max_iter == 300
    assert cfg.solver.base_lr == pytest.approx(1e-4)  # yacs-style literal decoding of "1e-4"
    assert cfg.mask_head.coords == "none" and cfg.mask_head_in_channels == 8
    assert cfg.input.min_size_test == 512
    assert cfg.fcos.thresh_with_ctr is True and cfg.mask_head.max_proposals == 500  # Base-CondInst defaults


def test_dict_base_dir(tmp_path):
    _write(tmp_path / "parent.yaml", "MODEL:\n  FCOS:\n    NUM_CLASSES: 7\n")
    cfg = config_from_yaml_dict({"_BASE_": "parent.yaml", "INPUT": {"MIN_SIZE_TEST": 600}}, base_dir=tmp_path)
    assert cfg.fcos.num_classes == 7 and cfg.input.min_size_test == 600 and cfg.name == "custom"


def test_missing_unknown_base(tmp_path):
    path = _write(tmp_path / "a.yaml", '_BASE_: "Base-RCNN-FPN.yaml"\n')
    with pytest.raises(ConfigError, match=r"a\.yaml.*Base-RCNN-FPN\.yaml.*not found"):
        config_from_yaml(path)


def test_base_cycle(tmp_path):
    _write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        config_from_yaml(tmp_path / "a.yaml")


def test_typo_in_base_names_the_base(tmp_path):
    _write(tmp_path / "parent.yaml", "MODEL:\n  FCOS:\n    INFERENCE_TH_TES: 0.3\n")
    path = _write(tmp_path / "child.yaml", "_BASE_: parent.yaml\n")
    with pytest.raises(ConfigError, match=r"parent\.yaml.*MODEL\.FCOS\.INFERENCE_TH_TES"):
        config_from_yaml(path)


# ---- key and value checking -------------------------------------------------------------------


def test_typo_key(tmp_path):
    path = _write(tmp_path / "t.yaml", '_BASE_: "Base-CondInst.yaml"\nMODEL:\n  FCOS:\n    INFERENCE_TH_TES: 0.3\n')
    with pytest.raises(ConfigError) as e:
        config_from_yaml(path)
    assert "t.yaml" in str(e.value) and "MODEL.FCOS.INFERENCE_TH_TES" in str(e.value)


@pytest.mark.parametrize("text, key", [
    ("MODEL:\n  CONDINST:\n    MASKHEAD: {CHANNELS: 8}\n", "MODEL.CONDINST.MASKHEAD"),
    ("SOLVERS: {BASE_LR: 0.1}\n", "SOLVERS"),
    ("MODEL:\n  _BASE_: x.yaml\n", "MODEL._BASE_"),
])
def test_unknown_keys(text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_yaml_dict(yaml.safe_load(text))


def test_section_and_value_shapes():
    with pytest.raises(ConfigError, match="MODEL.FCOS is a section"):
        config_from_yaml_dict({"MODEL": {"FCOS": 3}})
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS takes a value"):
        config_from_yaml_dict({"MODEL": {"WEIGHTS": {"a": 1}}})


def test_irrelevant_known_keys_are_ignored():
    d = {"DATASETS": {"TRAIN": ("my_train",)}, "DATALOADER": {"NUM_WORKERS": 1}, "TEST": {"EVAL_PERIOD": 10},
         "MODEL": {"ROI_HEADS": {"NUM_CLASSES": 3}, "BLENDMASK": {"ATTN_SIZE": 7}, "WEIGHTS": "x.pth",
                   "DEVICE": "cuda"}, "VERSION": 2, "SEED": 1, "OUTPUT_DIR": "out"}
    assert dataclasses.replace(config_from_yaml_dict(d), name="x") == dataclasses.replace(CondInstConfig(), name="x")


def _nested(dotted: str, value):
    d = value
    for part in reversed(dotted.split(".")):
        d = {part: d}
    return d


@pytest.mark.parametrize("key, value", [
    ("MODEL.META_ARCHITECTURE", "GeneralizedRCNN"),
    ("MODEL.PROPOSAL_GENERATOR.NAME", "RPN"),
    ("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"),
    ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True]),
    ("MODEL.RESNETS.NUM_GROUPS", 32),
    ("MODEL.RESNETS.RES5_DILATION", 2),
    ("MODEL.RESNETS.DEPTH", 152),
    ("MODEL.RESNETS.NORM", "SyncBN"),
    ("MODEL.FCOS.NUM_SHARE_CONVS", 1),
    ("MODEL.FCOS.NUM_CLS_CONVS", 2),  # != NUM_BOX_CONVS (4)
    ("MODEL.FCOS.USE_DEFORMABLE", True),
    ("MODEL.FCOS.SIZES_OF_INTEREST", [64, 128, 256]),
    ("MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"]),
    ("MODEL.FPN.NORM", "GN"),
    ("MODEL.CONDINST.MASK_HEAD.NUM_LAYERS", 0),
    ("MODEL.CONDINST.MASK_OUT_STRIDE", 3),
    ("MODEL.CONDINST.MASK_BRANCH.NORM", ""),
    ("MODEL.BOXINST.ENABLED", True),
    ("INPUT.MIN_SIZE_TEST", 0),
    ("INPUT.FORMAT", "L"),
    ("INPUT.CROP.ENABLED", True),
    ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "range"),
    ("MODEL.FPN.OUT_CHANNELS", 100),  # not a multiple of 32
    ("MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS", "yes"),
    ("MODEL.FCOS.NMS_TH", "high"),
    ("SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"),
    ("SOLVER.STEPS", [80000, 60000]),
    ("SOLVER.WEIGHT_DECAY_BIAS", 0.0),
    ("SOLVER.CLIP_GRADIENTS", {"ENABLED": True, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0}),
])
def test_unsupported_values(key, value):
    with pytest.raises(ConfigError) as e:
        config_from_yaml_dict(_nested(key, value), source="bad.yaml")
    msg = str(e.value)
    assert msg.startswith("bad.yaml: ")
    leaf = key.rsplit(".", 1)[1]
    assert leaf in msg


def test_bifpn_requires_official_in_features_and_norm():
    # AdelaiDet's BiFPN defaults are IN_FEATURES res2-res5 and NORM "": the official presets override both.
    with pytest.raises(ConfigError) as e:
        config_from_yaml_dict({"MODEL": {"BACKBONE": {"NAME": "build_fcos_resnet_bifpn_backbone"}}})
    assert "MODEL.BiFPN.IN_FEATURES" in str(e.value) and "MODEL.BiFPN.NORM" in str(e.value)


def test_several_problems_reported_together():
    with pytest.raises(ConfigError, match=r"2 problems"):
        config_from_yaml_dict({"MODEL": {"RESNETS": {"NUM_GROUPS": 32, "RES5_DILATION": 2}}})


def test_value_mapping():
    cfg = config_from_yaml_dict({
        "MODEL": {
            "RESNETS": {"STRIDE_IN_1X1": False, "DEPTH": "101"},  # yacs decodes literal strings
            "BACKBONE": {"FREEZE_AT": 0},
            "FCOS": {"NUM_CLS_CONVS": 2, "NUM_BOX_CONVS": 2, "LOSS_ALPHA": 0.5, "LOSS_GAMMA": 1.5,
                     "PRE_NMS_TOPK_TEST": 500, "POST_NMS_TOPK_TEST": 50, "THRESH_WITH_CTR": False},
            "CONDINST": {"MAX_PROPOSALS": -1, "TOPK_PROPOSALS_PER_IM": 64, "MASK_OUT_STRIDE": 2,
                         "MASK_HEAD": {"NUM_LAYERS": 1, "CHANNELS": 16},
                         "MASK_BRANCH": {"CHANNELS": 64, "OUT_CHANNELS": 16, "NUM_CONVS": 2}},
            "PIXEL_MEAN": [123.675, 116.28, 103.53], "PIXEL_STD": [58.395, 57.12, 57.375],
        },
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": 800, "HFLIP_TRAIN": False, "MAX_SIZE_TEST": 1000},
        "SOLVER": {"CLIP_GRADIENTS": {"ENABLED": True, "CLIP_TYPE": "norm", "CLIP_VALUE": 35.0, "NORM_TYPE": 2.0},
                   "WEIGHT_DECAY": 5e-4, "WEIGHT_DECAY_BIAS": 5e-4, "IMS_PER_BATCH": 4, "WARMUP_ITERS": 0},
    })
    assert cfg.backbone.style == "pytorch" and cfg.backbone.depth == 101 and cfg.backbone.freeze_at == 0
    assert cfg.fcos.num_convs == 2 and cfg.fcos.focal_alpha == 0.5 and cfg.fcos.focal_gamma == 1.5
    assert (cfg.mask_branch.sem_loss_alpha, cfg.mask_branch.sem_loss_gamma) == (0.5, 1.5)
    assert (cfg.fcos.pre_nms_topk, cfg.fcos.post_nms_topk, cfg.fcos.thresh_with_ctr) == (500, 50, False)
    assert (cfg.mask_head.max_proposals, cfg.mask_head.topk_proposals_per_im, cfg.mask_head.mask_out_stride) == (
        -1, 64, 2)
    assert cfg.mask_head.num_layers == 1 and cfg.mask_head.channels == 16
    assert cfg.num_gen_params == 16 + 2 + 1
    assert (cfg.mask_branch.channels, cfg.mask_branch.out_channels, cfg.mask_branch.num_convs) == (64, 16, 2)
    assert cfg.input.format == "RGB" and cfg.input.pixel_std == (58.395, 57.12, 57.375)
    assert cfg.input.min_size_train == (800,) and cfg.input.hflip_train is False and cfg.input.max_size_test == 1000
    assert cfg.solver.clip_gradients == 35.0 and cfg.solver.ims_per_batch == 4 and cfg.solver.warmup_iters == 0
    assert cfg.solver.weight_decay == 5e-4


def test_clip_disabled_is_zero():
    cfg = config_from_yaml_dict({"SOLVER": {"CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "norm",
                                                               "CLIP_VALUE": 5.0}}})
    assert cfg.solver.clip_gradients == 0.0


# ---- file errors --------------------------------------------------------------------------------


def test_malformed_yaml(tmp_path):
    path = _write(tmp_path / "broken.yaml", "MODEL:\n  FCOS: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*malformed YAML"):
        config_from_yaml(path)


@pytest.mark.parametrize("text", ["- MODEL\n- SOLVER\n", "just a string\n", ""])
def test_non_mapping_top_level(tmp_path, text):
    path = _write(tmp_path / "flat.yaml", text)
    with pytest.raises(ConfigError, match=r"flat\.yaml.*mapping"):
        config_from_yaml(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        config_from_yaml(tmp_path / "nope.yaml")


def test_unsafe_tags_rejected(tmp_path):
    path = _write(tmp_path / "evil.yaml", "MODEL: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml"):
        config_from_yaml(path)


def test_non_dict_input():
    with pytest.raises(ConfigError, match="<dict>"):
        config_from_yaml_dict(["MODEL"])  # type: ignore[arg-type]
