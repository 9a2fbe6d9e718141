"""Parity with the official SipMask (JialeCao001/SipMask @ bc63fa93) on the golden data: the
real-time R-50 model on deterministic weights, loaded through the public loader without a config."""
from __future__ import annotations

import json
import sys
import subprocess

import numpy as np
import pytest
import torch

from condinst.predictor import Predictor
from condinst.preprocess import read_image

from .conftest import GOLDEN

# "reference": the fp32 model as loaded; "optimized": the default from_weights path (FrozenBN folded).
PATHS = {"reference": 1e-4, "optimized": 5e-4}


@pytest.fixture(scope="module", params=list(PATHS))
def case(request, golden, golden_weights):
    predictor = Predictor.from_weights(golden_weights, optimize=request.param == "optimized")
    return PATHS[request.param], predictor, read_image(GOLDEN / "input.png")


def _max_diff(ours: torch.Tensor, ref: np.ndarray, rel: float) -> float:
    """Max abs difference, asserted within rel * max(1, |ref|max) (box distances reach ~270 px)."""
    ours = ours.detach().float().numpy()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = float(np.abs(ours.astype(np.float64) - ref).max())
    assert diff <= rel * max(1.0, float(np.abs(ref).max())), diff
    return diff


def test_checkpoint_is_recognised_from_its_keys(case):
    _, predictor, _ = case
    cfg = predictor.cfg
    assert cfg.name == "sipmask_r50_caffe_fpn_ssd_6x"
    assert (cfg.fcos.num_convs, cfg.sipmask.norm, cfg.sipmask.nms, cfg.input.resize) == (2, "none", "fast", "mmcv_resize")
    assert cfg.class_names[14] == "bird" and len(cfg.class_names) == 80


def test_input_and_head_outputs_match(case, golden):
    rel, predictor, image = case
    batch, sizes = predictor.prepare([image])
    assert sizes == [(544, 544)]
    assert np.array_equal(batch[0].contiguous().numpy(), golden["input_normalized_padded"])
    with torch.no_grad():
        out = predictor.model.forward_heads(batch)
    for level in range(5):
        for name, ours in (("cls_scores", out.cls_logits), ("bbox_preds", out.bbox_reg),
                           ("centerness", out.ctrness), ("cof_preds", out.cofs)):
            _max_diff(ours[level][0], golden[f"{name}_p{level + 3}"], rel)
    _max_diff(out.basis[0], golden["feat_masks"], rel)


def _compare(result, golden) -> dict:
    assert len(result) == 100
    assert torch.equal(result.classes, torch.from_numpy(golden["pred_classes"]))
    box = float((result.boxes - torch.from_numpy(golden["pred_boxes"])).abs().max())
    score = float((result.scores - torch.from_numpy(golden["scores"])).abs().max())
    masks, ref = result.masks.numpy(), golden["pred_masks"]
    iou = (masks & ref).sum((1, 2)) / (masks | ref).sum((1, 2))
    assert box <= 1e-2 and score <= 1e-4 and iou.min() >= 0.99, (box, score, iou.min())
    return {"box": box, "score": score, "iou": float(iou.min())}


def test_final_detections_match(case, golden):
    _, predictor, image = case
    result = predictor(image)[0]
    assert result.image_size == (480, 640)
    _compare(result, golden)


def test_config_named_after_the_official_file_gives_the_golden_detections(golden, golden_weights, case):
    """`--config sipmask_r50_caffe_fpn_ssd_6x` (the golden data's config file) builds the network of its
    checkpoint and the same settings as recognising the file from its keys."""
    _, recognised, image = case
    predictor = Predictor.from_weights(golden_weights, config="sipmask_r50_caffe_fpn_ssd_6x", optimize=False)
    assert predictor.cfg == recognised.cfg
    _compare(predictor(image)[0], golden)


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_predict_cli_on_the_official_checkpoint(golden, golden_weights, tmp_path):
    """`python -m condinst predict` without --config gives the golden detections as COCO results, for each
    image of a batch of two."""
    import shutil

    out = tmp_path / "results.json"
    for name in ("a.png", "b.png"):
        shutil.copy(GOLDEN / "input.png", tmp_path / name)
    proc = subprocess.run([sys.executable, "-m", "condinst", "predict", "--weights", str(golden_weights),
                           "--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--output", str(out),
                           "--batch-size", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    everything = json.loads(out.read_text())
    entries = [e for e in everything if e["file_name"] == "a.png"]
    assert len(entries) == 100 and len(everything) == 200
    assert sorted(e["score"] for e in entries) == sorted(e["score"] for e in everything if e["file_name"] == "b.png")
    from pycocotools import mask as mask_utils

    from condinst.coco import COCO_CATEGORY_IDS

    entries.sort(key=lambda e: -e["score"])
    order = np.argsort(-golden["scores"], kind="stable")
    assert [e["category_id"] for e in entries] == [COCO_CATEGORY_IDS[c] for c in golden["pred_classes"][order]]
    boxes = np.array([e["bbox"] for e in entries])
    ref = golden["pred_boxes"][order]
    ref_xywh = np.concatenate([ref[:, :2], ref[:, 2:] - ref[:, :2]], 1)
    assert np.abs(boxes - ref_xywh).max() <= 1e-2 + 1e-3  # COCO entries carry 3 decimals
    assert np.abs(np.array([e["score"] for e in entries]) - golden["scores"][order]).max() <= 1e-3
    for e, m in zip(entries, golden["pred_masks"][order]):
        ours = mask_utils.decode(e["segmentation"]).astype(bool)
        assert (ours & m).sum() / (ours | m).sum() >= 0.99


def test_the_app_segments_and_explains_with_sipmask(golden, golden_weights):
    """The annotation app's model session gives the golden detections as predictions, and explains them
    with SipMask's own explainer (coefficients and bases, tests/condinst/test_sipmask_explain.py)."""
    from app.model.session import ModelSession
    from condinst.sipmask.explain import SipMaskExplainer

    session = ModelSession.load(golden_weights)
    image = read_image(GOLDEN / "input.png")
    predictions = session.predictions("input", lambda: image)
    assert len(predictions) == 100
    assert sorted(p.score for p in predictions) == pytest.approx(sorted(golden["scores"].tolist()), abs=1e-4)
    assert session.explains and isinstance(session.explainer("input", lambda: image), SipMaskExplainer)


def test_dense_only_export_refuses_sipmask_in_one_line(golden_weights, tmp_path):
    """The whole graph exports (tests/condinst/test_sipmask_export.py); the dense part is CondInst's only."""
    proc = subprocess.run([sys.executable, "-m", "condinst", "export", "--weights", str(golden_weights),
                           "--output", str(tmp_path / "m.onnx"), "--dense-only"], capture_output=True, text=True)
    assert proc.returncode != 0 and not (tmp_path / "m.onnx").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "SipMask" in lines[0], proc.stderr
