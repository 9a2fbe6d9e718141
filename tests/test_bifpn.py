"""BiFPN backbone (MS_R_50_BiFPN_* models): structure, and parity with official AdelaiDet golden data.

The golden data (`shared/reference/parity/bifpn_tiny/`) is the official CondInst MS_R_50_BiFPN_1x model
shrunk to a tiny size (stem 16, res2 64, width 16, BiFPN 32 channels, 2 repeats) with random
deterministic weights, run on CPU in eval mode; `fpn_p3..fpn_p7` are its BiFPN outputs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from condinst.backbone import ResNet  # noqa: E402
from condinst.bifpn import BIFPN_NODES, BiFPN  # noqa: E402
from condinst.config import (  # noqa: E402
    CAFFE_PIXEL_MEAN, CAFFE_PIXEL_STD, BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig,
)
from condinst.model import CondInst, normalize_and_pad  # noqa: E402


def _shared_dir() -> Path:
    default = ROOT.parent / "shared"
    if default.is_dir():
        return default
    return Path(os.environ.get("CONDINST_SHARED", str(default)))


FIXTURE = _shared_dir() / "reference" / "parity" / "bifpn_tiny"
# Buffers of the official DynamicMaskHead that our mask head does not keep.
OFFICIAL_ONLY_KEYS = {"mask_head._iter", "mask_head.sizes_of_interest"}

TINY_BACKBONE = dict(stem_out_channels=16, res2_out_channels=64, width_per_group=16)


def tiny_bifpn_config() -> CondInstConfig:
    """Our config equal to the fixture's config.yaml."""
    return CondInstConfig(
        name="bifpn_tiny",
        backbone=BackboneConfig(**TINY_BACKBONE),
        neck=NeckConfig(kind="bifpn", out_channels=32, bifpn_num_repeats=2),
        mask_branch=MaskBranchConfig(channels=16),
    )


def needs_fixture():
    if not FIXTURE.is_dir():
        pytest.skip(f"golden data not found: {FIXTURE}")


# ---- structure (no golden data needed) ---------------------------------------------------------

def test_output_shapes_and_strides():
    torch.manual_seed(0)
    neck = BiFPN(ResNet(BackboneConfig(**TINY_BACKBONE)), out_channels=32, num_repeats=2).eval()
    assert neck.out_channels == 32 and neck.size_divisibility == 32
    with torch.no_grad():
        feats = neck(torch.randn(2, 3, 320, 448))
    assert [tuple(f.shape) for f in feats] == [
        (2, 32, 40, 56), (2, 32, 20, 28), (2, 32, 10, 14), (2, 32, 5, 7), (2, 32, 3, 4)
    ]


def test_laterals_only_in_first_repeat_and_shared_per_level():
    neck = BiFPN(ResNet(BackboneConfig(**TINY_BACKBONE)), out_channels=32, num_repeats=3)
    names = [n for n, _ in neck.repeated_bifpn.named_children()]
    assert names == ["0", "1", "2"]
    laterals = {r: sorted(n for n, _ in layer.named_children() if n.startswith("lateral"))
                for r, layer in enumerate(neck.repeated_bifpn)}
    # C3/C4/C5 have 128/256/512 channels -> one lateral each; R6/R7 already have 32.
    assert laterals == {0: ["lateral_0_f0", "lateral_1_f1", "lateral_2_f2"], 1: [], 2: []}
    weights = {n: tuple(p.shape) for n, p in neck.repeated_bifpn[1].named_parameters() if n.startswith("weights")}
    assert weights == {f"weights_{node.suffix}": (len(node.inputs),) for node in BIFPN_NODES}


def test_no_res6_reduction_when_c5_channels_match():
    # res2_out_channels=16 -> C5 has 128 channels = out_channels: R6 is a plain max pool.
    cfg = BackboneConfig(stem_out_channels=16, res2_out_channels=16, width_per_group=8)
    neck = BiFPN(ResNet(cfg), out_channels=128, num_repeats=1)
    assert not any(k.startswith("bottom_up.res6") for k in neck.state_dict())
    assert not any(k.startswith("repeated_bifpn.0.lateral_2") for k in neck.state_dict())
    with torch.no_grad():
        feats = neck.eval()(torch.randn(1, 3, 128, 192))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


def test_too_small_side_raises_like_official():
    # Padded 64x96: R6 is 1x2 and R7 1x1, so P7 would need a pool along W only; AdelaiDet raises too.
    neck = BiFPN(ResNet(BackboneConfig(**TINY_BACKBONE)), out_channels=32, num_repeats=1).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="too small"):
        neck(torch.randn(1, 3, 64, 96))
    with torch.no_grad():  # both sides <= 64 is fine (every level above C5 is 1x1)
        feats = neck(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]


def test_train_mode_backward_reaches_fusion_weights():
    torch.manual_seed(0)
    neck = BiFPN(ResNet(BackboneConfig(**TINY_BACKBONE)), out_channels=32, num_repeats=2).train()
    feats = neck(torch.randn(2, 3, 128, 128))
    sum(f.square().mean() for f in feats).backward()
    for name, p in neck.named_parameters():
        if "weights_f" in name or "lateral" in name or "res6" in name:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # FrozenBN stem / res2 stay frozen (freeze_at=2).
    assert neck.bottom_up.backbone.stem.conv1.weight.grad is None


# ---- parity with the official model ------------------------------------------------------------

def _official_keys() -> list[tuple[str, tuple[int, ...]]]:
    entries = json.loads((FIXTURE / "keys.json").read_text())
    return [(e["key"], tuple(e["shape"])) for e in entries if e["key"] not in OFFICIAL_ONLY_KEYS]


def test_state_dict_keys_and_shapes_match_official():
    needs_fixture()
    model = CondInst(tiny_bifpn_config())
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    official = _official_keys()
    missing = sorted(set(official) - set(ours))
    unexpected = sorted(set(ours) - set(official))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    assert ours == official  # same order too


@pytest.fixture(scope="module")
def official_model() -> CondInst:
    needs_fixture()
    model = CondInst(tiny_bifpn_config())
    state = torch.load(FIXTURE / "state_dict.pth", map_location="cpu", weights_only=True)["model"]
    state = {k: v for k, v in state.items() if k not in OFFICIAL_ONLY_KEYS}
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    needs_fixture()
    with np.load(FIXTURE / "outputs.npz") as z:
        return {k: z[k] for k in z.files}


def test_bifpn_outputs_match_official(official_model, golden):
    image = torch.from_numpy(golden["resized_image_bgr"]).permute(2, 0, 1)  # (3, 320, 427) BGR uint8
    batch = normalize_and_pad([image], CAFFE_PIXEL_MEAN, CAFFE_PIXEL_STD, official_model.backbone.size_divisibility)
    assert tuple(batch.shape) == (1, 3, 320, 448)
    meta = json.loads((FIXTURE / "meta.json").read_text())
    assert batch.double().sum().item() == pytest.approx(meta["normalized_input_sum"], rel=1e-9)

    with torch.no_grad():
        feats = official_model.backbone(batch)
    assert len(feats) == 5
    diffs = {}
    for level, ours in zip(range(3, 8), feats):
        ref = golden[f"fpn_p{level}"]
        assert tuple(ours.shape[1:]) == ref.shape, level
        diffs[f"p{level}"] = float(np.abs(ours[0].numpy() - ref).max())
        scale = float(np.abs(ref).max())
        # Observed ~2e-7 (|ref| max ~0.5). 1e-5 is tight enough to catch a missing fusion epsilon
        # (dropping the 1e-4 in sum(w) + 1e-4 moves the outputs by 1.3e-5 - 3.7e-5).
        assert diffs[f"p{level}"] <= 1e-5 * max(scale, 1.0), (level, diffs)
    print("BiFPN max abs diff per level:", diffs)
