"""Predictor behaviour: inputs of every kind, batches, ablation knobs, explanations, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from condinst.checkpoint import save_checkpoint
from condinst.explain import Explainer
from condinst.model import CondInst
from condinst.predictor import Predictor
from condinst.preprocess import ImageError, read_image, resized_shape
from testutils import randomize_, tiny_config


@pytest.fixture(scope="module")
def predictor():
    cfg = tiny_config()
    return Predictor(randomize_(CondInst(cfg), seed=0).eval(), cfg)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    img = np.zeros((240, 300, 3), np.uint8) + np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None]
    img[60:160, 80:200] = rng.integers(0, 255, 3)
    return img


# ---- image reading ----------------------------------------------------------------------------

def test_read_image_converts_modes(tmp_path):
    gray = (np.arange(64 * 80) % 256).astype(np.uint8).reshape(64, 80)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 0], gray)
    rgba = np.dstack([np.full((10, 12, 3), 7, np.uint8), np.full((10, 12), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").shape == (10, 12, 3)
    deep = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert out[-1, -1, 0] == round(deep[-1, -1] / 257)


def test_read_image_rejects_bad_files(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        read_image(tmp_path / "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "empty.png")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8) + 90).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="truncated|corrupt"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="too large"):
        read_image(tmp_path / "full.jpg", max_pixels=100 * 100)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_resized_shape_matches_detectron2_rule():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(480, 640, 320, 1333) == (320, 427)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)  # long side capped


# ---- predictions -------------------------------------------------------------------------------

def test_outputs_are_at_original_size_and_sorted(predictor, photo):
    r = predictor(photo)[0]
    assert len(r) > 0 and r.masks.shape[1:] == photo.shape[:2] and r.masks.dtype == torch.bool
    assert torch.all(r.scores[:-1] >= r.scores[1:])
    assert (r.boxes[:, 0::2] <= photo.shape[1]).all() and (r.boxes[:, 1::2] <= photo.shape[0]).all()
    assert (r.boxes[:, 2:] > r.boxes[:, :2]).all()


@pytest.mark.slow
def test_batch_of_different_sizes_equals_single_images(predictor, photo):
    """Images of different sizes whose padded input size is the same alone and in the batch
    (padding to the batch maximum changes border responses, in the official code too)."""
    other = np.ascontiguousarray(photo[:200, ::-1][:, :260])  # 200x260 -> 320x416, like 240x300
    batch = predictor([photo, other])
    assert [r.image_size for r in batch] == [(240, 300), (200, 260)]
    mixed = predictor([photo, np.ascontiguousarray(photo[:100, :250])])
    assert mixed[1].masks.shape[1:] == (100, 250) and (mixed[1].boxes[:, 3] <= 100).all()
    for image, r in zip([photo, other], batch):
        single = predictor(image)[0]
        assert len(single) == len(r)
        assert torch.allclose(single.scores, r.scores, atol=1e-4)
        union = (single.masks | r.masks).sum((1, 2))
        iou = torch.where(union > 0, (single.masks & r.masks).sum((1, 2)) / union.clamp(min=1), 1.0)
        assert iou.min() > 0.98


@pytest.mark.slow
def test_grayscale_and_rgba_arrays_are_accepted(predictor, photo):
    assert len(predictor(photo[..., 0])[0]) >= 0
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert torch.equal(predictor(rgba)[0].masks, predictor(photo)[0].masks)
    assert predictor([]) == []


@pytest.mark.parametrize("knobs", [dict(coords="none"), dict(coords="absolute"), dict(mask_out_stride=2),
                                   dict(num_layers=2, channels=16), dict(num_layers=4, channels=4),
                                   dict(nms="mask")])
@pytest.mark.slow
def test_ablation_knobs_run_end_to_end(knobs, photo):
    cfg = tiny_config(**knobs)
    model = randomize_(CondInst(cfg), seed=0).eval()
    assert model.controller.out_channels == cfg.num_gen_params
    r = Predictor(model, cfg)(photo)[0]
    assert r.masks.shape[1:] == photo.shape[:2]
    out, batch, _ = Predictor(model, cfg).heads(photo)
    logits = model.mask_logits(out.mask_feats, r.detections)
    assert logits.shape[-2] == batch.shape[-2] // cfg.mask_head.mask_out_stride


def test_mask_nms_suppresses_overlapping_masks_of_a_class(photo):
    cfg = tiny_config(nms="mask")
    cfg.fcos.nms_threshold = 0.3
    model = randomize_(CondInst(cfg), seed=0).eval()
    r = Predictor(model, cfg)(photo)[0]
    for c in r.classes.unique():
        m = r.masks[r.classes == c].flatten(1).float()
        if len(m) > 1:
            # the masks that survive overlap little at stride 8; at full res allow slack
            inter = m @ m.T
            union = m.sum(1)[:, None] + m.sum(1)[None] - inter
            iou = (inter / union.clamp(min=1)).fill_diagonal_(0)
            assert iou.max() < 0.6


# ---- explanations ------------------------------------------------------------------------------

@pytest.mark.slow
def test_explainer_matches_predictor_and_segments_at_a_point(predictor, photo):
    ex = Explainer(predictor, photo)
    result = ex.result()
    direct = predictor(photo)[0]
    assert torch.equal(result.masks, direct.masks)
    inside = [k for k in range(len(result)) if ex.instance(k).location[0] < photo.shape[1]
              and ex.instance(k).location[1] < photo.shape[0]]
    k = inside[0]
    e = ex.instance(k)
    assert [w.shape for w in e.weights] == [(8, 10), (8, 8), (1, 8)]
    assert [b.shape for b in e.biases] == [(8,), (8,), (1,)]
    assert e.coord_maps.shape[0] == 2 and e.mask_logits.ndim == 2
    x, y = e.location
    point = ex.at_point(x, y, class_index=e.class_index)
    if point.explanation.fpn_level == e.fpn_level:
        assert (point.mask == result.masks[k].numpy()).mean() > 0.999
    assert point.mask.shape == photo.shape[:2]
    with pytest.raises(ValueError):
        ex.at_point(-1, 5)
    assert ex.mask_features().shape[0] == 8


def test_candidates_near_points_run_the_cached_filters_in_one_batch(predictor, photo):
    ex = Explainer(predictor, photo)
    x, y = photo.shape[1] // 2, photo.shape[0] // 2
    cands = ex.candidates([(x, y)], radius=1)
    levels = cands.detections.fpn_levels.tolist()
    assert len(cands.detections) == cands.probs.shape[0] and set(levels) == set(range(len(predictor.cfg.fcos.strides)))
    assert all(levels.count(level) <= 9 for level in set(levels))  # 3x3 cells per level at most
    point = ex.at_point(x, y)  # its cell is one of the candidates, with the same mask
    e = point.explanation
    wl = ex.outputs.cls_logits[e.fpn_level].shape[-1]
    k = [n for n in range(len(cands.detections)) if levels[n] == e.fpn_level
         and int(cands.detections.grid_index[n]) == e.grid_cell[0] * wl + e.grid_cell[1]][0]
    assert np.allclose(ex.candidate_to_image(cands.probs[k]), point.probs, atol=1e-5)


# ---- command line ------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "condinst", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_cli_predict_writes_coco_results(tmp_path, photo):
    cfg = tiny_config(num_classes=3)
    cfg.class_names, cfg.category_ids = ("date", "fig", "hazelnut"), (1, 2, 7)
    weights = save_checkpoint(tmp_path / "m.pth", randomize_(CondInst(cfg), 2), cfg)
    Image.fromarray(photo).save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_text("x")
    out = tmp_path / "res.json"
    proc = _cli("predict", "--weights", str(weights), "--input", str(tmp_path / "a.png"), str(tmp_path / "bad.jpg"),
                "--output", str(out), "--vis", str(tmp_path / "vis"), "--score-threshold", "0.01")
    assert proc.returncode == 1, proc.stderr  # one input was not an image
    assert "bad.jpg" in proc.stderr
    entries = json.loads(out.read_text())
    assert entries and {e["category_id"] for e in entries} <= {1, 2, 7}
    from pycocotools import mask as mask_utils

    e = entries[0]
    assert e["file_name"] == "a.png" and isinstance(e["segmentation"]["counts"], str)
    assert e["segmentation"]["size"] == [240, 300]
    assert mask_utils.decode({**e["segmentation"], "counts": e["segmentation"]["counts"].encode()}).shape == (240, 300)
    assert (tmp_path / "vis" / "a.png").exists()


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    proc = _cli("predict", "--weights", str(tmp_path / "none.pth"), "--input", "x.png", "--output", "o.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    proc = _cli("predict", "--weights", "w.pth", "--config", "MS_R_50_9x", "--input", str(tmp_path), "--output", "o.json")
    assert proc.returncode == 2
