"""SipMask's explanation (condinst.sipmask.explain): the 4 coefficient sets, the basis masks and the quadrant
partials of an instance re-assemble exactly the mask the model returned for it."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from condinst.errors import UserError
from condinst.predictor import Predictor
from condinst.preprocess import read_image
from condinst.sipmask.explain import SipMaskExplainer
from testutils import PARITY, tiny_sipmask

GOLDEN = PARITY / "sipmask_fast_544"


@pytest.fixture(scope="module")
def golden_explainer(tmp_path_factory):
    if not (GOLDEN / "outputs.npz").is_file():
        pytest.skip(f"SipMask golden data not found at {GOLDEN} (set CONDINST_SHARED)")
    weights = tmp_path_factory.mktemp("sipmask") / "official.pth"  # rebuilt official mmdet v1 checkpoint
    subprocess.run([sys.executable, str(GOLDEN / "regen_weights.py"), str(GOLDEN), str(weights)], check=True,
                   capture_output=True)
    predictor = Predictor.from_weights(weights)
    return SipMaskExplainer(predictor, read_image(GOLDEN / "input.png")), dict(np.load(GOLDEN / "outputs.npz"))


def check_reassembly(explainer: SipMaskExplainer) -> int:
    """Every detection's partials: zero off their quadrant of the box, summing to the picked quadrant's
    combination, and re-assembling the model's mask pixel for pixel. Returns the number of detections."""
    result = explainer.result()
    for k in range(len(result)):
        exp = explainer.instance(k)
        for q in range(4):
            own = exp.inside & (exp.quadrant == q)
            assert not exp.partials[q][~own].any()
            assert np.array_equal(exp.partials[q][own], exp.quadrant_logits[q][own])
        assert np.array_equal(explainer.assemble(exp.partials, exp.mask_box), result.masks[k].numpy()), k
        probs = exp.mask_probs
        logit_threshold = np.log(exp.threshold / (1 - exp.threshold))
        assert not probs[~exp.inside].any()
        assert ((probs > exp.threshold) == (exp.inside & (exp.mask_logits > logit_threshold))).all()
    return len(result)


@pytest.mark.slow
def test_golden_instances_reassemble_exactly(golden_explainer):
    explainer, golden = golden_explainer
    assert check_reassembly(explainer) == 100
    assert np.array_equal(explainer.result().masks.numpy(), golden["pred_masks"])  # what the official code gives
    exp = explainer.instance(0)
    i, j = exp.grid_cell
    cofs = golden[f"cof_preds_p{exp.fpn_level + 3}"][:, i, j].reshape(4, 32)  # [0:32] top-left ... bottom-right
    assert np.abs(exp.coefficients - cofs).max() < 1e-3
    assert np.allclose(explainer.mask_features(), golden["feat_masks"], atol=1e-3)
    x1, y1, x2, y2 = exp.mask_box  # the kernel's split: (x2 - x1 + 0.1) / 2 from the box's corner
    assert exp.split == pytest.approx((x1 + (x2 - x1 + 0.1) / 2, y1 + (y2 - y1 + 0.1) / 2), abs=1e-4)
    assert exp.box == pytest.approx(tuple(golden["pred_boxes"][0]), abs=1e-2)


def test_at_point_assembles_the_location_under_the_point(golden_explainer):
    explainer, _ = golden_explainer
    exp = explainer.instance(0)
    point = explainer.at_point(*exp.location, class_index=exp.class_index)
    assert (point.explanation.fpn_level, point.explanation.grid_cell) == (exp.fpn_level, exp.grid_cell)
    assert np.array_equal(point.mask, explainer.result().masks[0].numpy())
    with pytest.raises(ValueError, match="outside"):
        explainer.at_point(-1, 5)


@pytest.mark.parametrize("preset, size", [("sipmask_r50_caffe_fpn_gn_1x", 128),
                                          ("sipmask++_r101_caffe_fpn_ssd_gn_10x", 256)])
@pytest.mark.slow
def test_small_random_sipmask_reassembles_exactly(preset, size):
    """The high-accuracy preset keeps the ratio (mmcv imrescale: one float factor) and uses class-wise NMS;
    SipMask++ re-scores (its re-scoring convs need a basis grid of 127+ cells); on a non-square image."""
    torch.manual_seed(0)
    model, cfg = tiny_sipmask(preset, min_size=size)
    image = np.random.default_rng(0).integers(0, 255, (150, 230, 3), dtype=np.uint8)
    explainer = SipMaskExplainer(Predictor(model, cfg), image)
    assert check_reassembly(explainer) > 10
    assert explainer.mask_features().shape[0] == 32
    with pytest.raises(UserError, match="CondInst's dynamic filters"):
        explainer.candidates([(10, 10)])
