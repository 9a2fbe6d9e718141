"""ONNX export of SipMask's whole graph: ONNX Runtime (and OpenVINO) give the official golden detections
(sipmask_fast_544) and PyTorch's own on small models of every family (Fast NMS, class-wise +1 NMS,
SipMask++'s DCN backbone and mask re-scoring), at sizes other than the traced one, with zero detections,
through `python -m condinst export` / `predict --weights model.onnx` and the app."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from condinst.checkpoint import save_checkpoint  # noqa: E402
from condinst.arch import get_preset  # noqa: E402
from condinst.export import CONFIG_KEY, GRAPH_KEY, export_onnx  # noqa: E402
from condinst.model import build_model  # noqa: E402
from condinst.predictor import Predictor, with_test_settings  # noqa: E402
from condinst.preprocess import read_image  # noqa: E402
from condinst.sipmask.onnx import classwise_nms, sampled_deform_conv2d  # noqa: E402
from testutils import PARITY, REPO  # noqa: E402

GOLDEN = PARITY / "sipmask_fast_544"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "condinst", *map(str, args)], capture_output=True, text=True, cwd=REPO)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def tie_order(ours, ref: dict, score: float) -> np.ndarray:
    """The order of `ours` that lines it up with `ref`: the same order, except that detections of one class
    whose scores are equal within `score` (random weights give such near-ties, and two float paths may rank
    them either way) are paired by their boxes."""
    boxes, scores, classes = ours.boxes.numpy(), ours.scores.numpy(), ours.classes.numpy()
    order, used = [], set()
    for i in range(len(ref["scores"])):
        tied = [j for j in range(len(scores)) if j not in used and classes[j] == ref["pred_classes"][i]
                and abs(scores[j] - ref["scores"][i]) <= score]
        j = min(tied, key=lambda j: np.abs(boxes[j] - ref["pred_boxes"][i]).max()) if tied else i
        order.append(j)
        used.add(j)
    return np.array(order)


def _same(ours, ref: dict, box: float = 1e-2, score: float = 1e-4) -> dict:
    """Detections `ours` (an ImageResult) against arrays `ref`: same count and classes, boxes, scores,
    mask IoU >= 0.99 (near-ties in score paired by box: `tie_order`). Returns the measured differences and
    the order used."""
    assert len(ours) == len(ref["scores"]) > 0
    order = tie_order(ours, ref, score)
    assert np.array_equal(ours.classes.numpy()[order], ref["pred_classes"])
    diffs = {"box": float(np.abs(ours.boxes.numpy()[order] - ref["pred_boxes"]).max()),
             "score": float(np.abs(ours.scores.numpy()[order] - ref["scores"]).max()),
             "iou": float(_mask_iou(ours.masks.numpy()[order], ref["pred_masks"]).min())}
    assert diffs["box"] <= box and diffs["score"] <= score and diffs["iou"] >= 0.99, diffs
    return diffs | {"order": order}


def _arrays(result) -> dict:
    return {"pred_boxes": result.boxes.numpy(), "scores": result.scores.numpy(),
            "pred_classes": result.classes.numpy(), "pred_masks": result.masks.numpy()}


# ---- the official golden outputs ----------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_onnx(tmp_path_factory):
    """The golden weights (an official mmdet v1 checkpoint) exported by the CLI without --config."""
    if not (GOLDEN / "outputs.npz").is_file():
        pytest.skip(f"SipMask golden data not found at {GOLDEN} (set CONDINST_SHARED)")
    folder = tmp_path_factory.mktemp("sipmask_onnx")
    weights = folder / "sipmask_r50_caffe_fpn_ssd_6x.pth"
    subprocess.run([sys.executable, str(GOLDEN / "regen_weights.py"), str(GOLDEN), str(weights)], check=True,
                   capture_output=True)
    proc = _cli("export", "--weights", weights, "--output", folder / "model.onnx")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote ")
    return folder / "model.onnx", dict(np.load(GOLDEN / "outputs.npz"))


@pytest.mark.slow
def test_onnx_runtime_gives_the_official_detections(golden_onnx):
    path, golden = golden_onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[GRAPH_KEY] == "whole" and json.loads(meta[CONFIG_KEY])["name"] == "sipmask_r50_caffe_fpn_ssd_6x"
    ops = {n.op_type for n in model.graph.node}
    assert {"GridSample", "TopK", "MatMul", "Resize"} <= ops and "NonMaxSuppression" not in ops  # Fast NMS
    predictor = Predictor.from_weights(path)
    assert predictor.cfg.sipmask.nms == "fast" and not predictor.is_torch
    result = predictor(read_image(GOLDEN / "input.png"))[0]
    assert result.image_size == (480, 640)
    diffs = _same(result, golden)
    assert diffs["box"] <= 1e-3 and diffs["score"] <= 1e-5, diffs


@pytest.mark.slow
def test_openvino_gives_the_official_detections(golden_onnx):
    pytest.importorskip("openvino")
    path, golden = golden_onnx
    result = Predictor.from_weights(path, backend="openvino")(read_image(GOLDEN / "input.png"))[0]
    _same(result, golden)


@pytest.mark.slow
def test_predict_cli_and_the_app_serve_the_exported_graph(golden_onnx, tmp_path):
    """`predict --weights model.onnx` writes the golden detections as COCO results; the app's model
    session predicts with the file and declines the Explain view with a message."""
    from pycocotools import mask as mask_utils

    path, golden = golden_onnx
    out = tmp_path / "results.json"
    proc = _cli("predict", "--weights", path, "--input", GOLDEN / "input.png", "--output", out)
    assert proc.returncode == 0, proc.stderr
    entries = sorted(json.loads(out.read_text()), key=lambda e: -e["score"])
    assert len(entries) == 100
    assert np.abs(np.array([e["score"] for e in entries]) - golden["scores"]).max() <= 1e-3
    for e, m in zip(entries, golden["pred_masks"]):
        ours = mask_utils.decode(e["segmentation"]).astype(bool)
        assert (ours & m).sum() / (ours | m).sum() >= 0.99

    from app.errors import ServiceError
    from app.model.session import ModelSession

    session = ModelSession.load(path)
    image = read_image(GOLDEN / "input.png")
    predictions = session.predictions("input", lambda: image)
    assert sorted(p.score for p in predictions) == pytest.approx(sorted(golden["scores"].tolist()), abs=1e-4)
    with pytest.raises(ServiceError):
        session.explainer("input", lambda: image)


# ---- small models of every family against PyTorch -----------------------------------------------

def _tiny(preset: str):
    """`preset`'s architecture with narrow channels, 3 classes and a small test size (R-50 depth)."""
    cfg = get_preset(preset)
    cfg.backbone.depth = 50
    cfg.backbone.stem_out_channels, cfg.backbone.res2_out_channels, cfg.backbone.width_per_group = 16, 64, 16
    cfg.neck.out_channels = 32
    cfg.fcos.num_classes = 3
    # SipMask++'s re-scoring convs need masks of 128+ px at stride 2
    cfg.input.min_size_test = 288 if cfg.sipmask.rescoring else 160
    cfg.input.max_size_test = cfg.input.min_size_test if cfg.sipmask.nms == "fast" else 267
    return cfg.validate()


def _weights_(model):
    """Deterministic weights (the golden data's recipe, crc32-seeded per key) that give detections."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            n = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                v = 0.5 + torch.rand(t.shape, generator=g)
            elif t.dim() == 4:
                v = n * (1 / 64 if "stem" in name else 1.0) / math.sqrt(t[0].numel())
            elif name.endswith(("fcos_cls.bias", "fcos_reg.bias")):
                v = (-1 + 0.5 * n) if "cls" in name else (2 + 0.1 * n)
            elif name.endswith(("weight", ".scale")):
                v = 1 + 0.1 * n
            else:
                v = 0.1 * n
            t.copy_(v)
    return model


@pytest.fixture(scope="module", params=["sipmask_r50_caffe_fpn_ssd_6x", "sipmask_r50_caffe_fpn_gn_1x",
                                        pytest.param("sipmask++_r101_caffe_fpn_ssd_gn_10x", marks=pytest.mark.slow)])
def tiny(request, tmp_path_factory):
    """(PyTorch predictor, exported file) of a small model of the family of `preset`."""
    folder = tmp_path_factory.mktemp("tiny")
    cfg = _tiny(request.param)
    weights = save_checkpoint(folder / "model.pth", _weights_(build_model(cfg).eval()), cfg)
    predictor = Predictor.from_weights(weights)
    return predictor, export_onnx(predictor.model, predictor.cfg, folder / "model.onnx")


@pytest.mark.parametrize("size", [(200, 300), (347, 251)])
@pytest.mark.slow
def test_small_models_match_pytorch_at_any_size(tiny, size):
    """Images of other sizes than the traced 320x320 (and of another aspect for the ratio-keeping
    models): the graph's detections are PyTorch's, class-wise +1 NMS and re-scoring included."""
    predictor, path = tiny
    image = np.random.default_rng(sum(size)).integers(0, 255, (*size, 3), dtype=np.uint8)
    ref = predictor(image)[0]
    ours = Predictor.from_weights(path)(image)[0]
    assert ours.image_size == size
    assert len(ref) == 100  # the weights give a full set of detections, so NMS and the cut are exercised
    order = torch.as_tensor(_same(ours, _arrays(ref))["order"])
    assert torch.equal(ours.detections.grid_index[order], ref.detections.grid_index)
    assert torch.equal(ours.detections.fpn_levels[order], ref.detections.fpn_levels)


def test_settings_are_inputs_and_zero_detections_work(tiny):
    predictor, path = tiny
    image = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    none = Predictor.from_weights(path, score_threshold=0.99)(image)[0]
    assert len(none) == 0 and none.masks.shape == (0, 200, 300)
    few = Predictor.from_weights(path, score_threshold=0.5)(image)[0]
    ref = Predictor(predictor.model, with_test_settings(predictor.cfg, score_threshold=0.5))(image)[0]
    assert 0 < len(few) == len(ref) < 100
    _same(few, _arrays(ref))


def test_sampled_deform_conv_equals_torchvision():
    """The exported deformable convs (plain grid_sample + matmul) against torchvision's kernel, for the
    head's 4-group stride-1 conv and the DCN backbone's 1-group stride-2 one, offsets beyond the border."""
    from torchvision.ops import deform_conv2d

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 64, 9, 11, generator=g), torch.randn(32, 64, 3, 3, generator=g)
    for stride, groups in ((1, 4), (2, 1)):
        ho, wo = (9 - 1) // stride + 1, (11 - 1) // stride + 1
        offset = 4 * torch.randn(2, groups * 18, ho, wo, generator=g)
        ref = deform_conv2d(x, offset, w, stride=stride, padding=1)
        assert torch.allclose(sampled_deform_conv2d(x, offset, w, stride=stride, padding=1), ref, atol=1e-4)


@pytest.mark.slow
def test_export_cli_refuses_what_sipmask_does_not_have_in_one_line(tmp_path):
    from PIL import Image

    cfg = _tiny("sipmask_r50_caffe_fpn_ssd_6x")
    weights = save_checkpoint(tmp_path / "w.pth", build_model(cfg).eval(), cfg)
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "photos" / "a.png")
    proc = _cli("export", "--weights", weights, "--output", tmp_path / "m.onnx", "--int8-calibration",
                tmp_path / "photos")  # --dense-only: tests/sipmask/test_parity.py
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:") and "SipMask" in lines[0]
    assert not (tmp_path / "m.onnx").exists()


class _ClasswiseNms(torch.nn.Module):
    def forward(self, boxes, scores, centerness, score_threshold, iou_threshold):
        return classwise_nms(boxes, scores, centerness, score_threshold, iou_threshold)


def _onnx_classwise_nms(tmp_path):
    """`classwise_nms` alone as an ONNX graph run by ONNX Runtime: (boxes, scores, centerness) -> keep, classes, scores."""
    import onnxruntime as ort

    n = 8
    args = (torch.rand(n, 4) * 10, torch.rand(n, 3), torch.rand(n), torch.tensor(0.05), torch.tensor(0.5))
    path = tmp_path / "nms.onnx"
    torch.onnx.export(_ClasswiseNms(), args, str(path), input_names=["boxes", "scores", "centerness", "st", "it"],
                      output_names=["keep", "classes", "final"], dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"},
                      "centerness": {0: "n"}, "keep": {0: "d"}, "classes": {0: "d"}, "final": {0: "d"}},
                      opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(boxes, scores, centerness, score_threshold=0.05, iou_threshold=0.5):
        feeds = {"boxes": boxes.numpy(), "scores": scores.numpy(), "centerness": centerness.numpy(),
                 "st": np.array(score_threshold, np.float32), "it": np.array(iou_threshold, np.float32)}
        return [torch.from_numpy(a) for a in session.run(None, feeds)]
    return run


def test_classwise_nms_in_the_graph_is_the_official_plus_one_nms(tmp_path):
    """ONNX NonMaxSuppression with the +1 folded into the boxes keeps what the official kernel port
    (`multiclass_nms`, +1 widths, IoU >= threshold) keeps, in the official order, on clustered boxes with
    every kind of overlap, integer boxes (IoUs exactly at the threshold) included."""
    from condinst.sipmask.postprocess import multiclass_nms

    run = _onnx_classwise_nms(tmp_path)
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        centres = torch.rand(20, 2, generator=g) * 200
        xy = centres[torch.randint(0, 20, (600,), generator=g)] + torch.randn(600, 2, generator=g) * 8
        wh = torch.rand(600, 2, generator=g) * 40 + 1
        boxes = torch.cat([xy, xy + wh], 1).round() if trial % 2 else torch.cat([xy, xy + wh], 1)  # integer boxes too
        scores, centerness = torch.rand(600, 3, generator=g), torch.rand(600, generator=g)
        keep, classes, final = run(boxes, scores, centerness)
        ref = multiclass_nms(boxes, scores, centerness, 0.05, 0.5, max_num=10**6)
        assert torch.equal(keep, ref[0]) and torch.equal(classes, ref[1]) and torch.equal(final, ref[2])
        assert 100 < len(keep) < 0.8 * (scores > 0.05).sum()  # real suppression happened
    # [0, 0, 9, 9] and [0, 0, 9, 4]: 100 and 50 pixels (+1), IoU exactly 0.5
    boxes, scores = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 4]]), torch.tensor([[0.9, 0, 0], [0.8, 0, 0]])
    ones = torch.ones(2)
    assert multiclass_nms(boxes, scores, ones, 0.05, 0.5, 100)[0].tolist() == [0] == run(boxes, scores, ones)[0].tolist()
    assert run(boxes, scores, ones, iou_threshold=0.5001)[0].tolist() == [0, 1]
    assert classwise_nms(boxes, scores, ones, torch.tensor(0.05), torch.tensor(0.5))[0].tolist() == [0]  # eager too
