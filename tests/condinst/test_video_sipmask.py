"""Video with a SipMask model (issue 16): a track keeps its 4 x 32 coefficients and box and re-assembles its
mask on each new frame's basis masks, crop-split at its moved box; `python -m condinst video` and
`evaluate-video` run with a SipMask checkpoint.

The SipMask model here has random weights (no trained SipMask is available), so these tests check the
mechanics only: the numbers they print are not a measure of SipMask's tracking quality.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import videokit
from condinst.checkpoint import save_checkpoint
from condinst.cli import main
from condinst.predictor import Predictor
from condinst.video.reader import open_video
from condinst.video.segmenter import segment_frames
from condinst.video.tracker import CondInstTracker, TrackerConfig, pairwise_mask_iou
from testutils import tiny_sipmask

pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture(scope="module")
def sipmask(tmp_path_factory):
    model, cfg = tiny_sipmask("sipmask_r50_caffe_fpn_ssd_6x", min_size=192, box_cells=4.0)
    weights = save_checkpoint(tmp_path_factory.mktemp("sipmask") / "sipmask.pth", model, cfg)
    return weights, Predictor.from_weights(weights)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    ann = videokit.write_ytvis(root / "ytvis.json", [videokit.crossing_video(root, frames=6, mp4=True)])
    return root, ann


def test_a_track_reassembles_its_mask_from_the_new_frame_bases(sipmask, videos):
    """On its own frame, a detection's coefficients and box give its mask (stride 8 vs the model's pasted
    mask); moved with the box, the assembled mask moves with it."""
    _, predictor = sipmask
    root, _ = videos
    frame = next(segment_frames(predictor, open_video(root / "crossing").frames(), batch_size=2))
    result = frame.result
    assert frame.mask_feats.shape[1] == 32 and len(result) > 5
    tracker = CondInstTracker(predictor.model)
    _, own = tracker.masks(frame, result.detections)
    h, w = -(-frame.input_size[0] // 8), -(-frame.input_size[1] // 8)
    model_masks = torch.nn.functional.interpolate(result.masks[:, None].float(), size=(h, w), mode="area")[:, 0]
    iou = pairwise_mask_iou(own, (model_masks > 0.5).flatten(1)).diagonal()
    assert float(iou.median()) > 0.7, iou
    det = result.detections.select(torch.tensor([0]))
    moved = det.select(torch.tensor([0]))
    moved.boxes = det.boxes + torch.tensor([16.0, 8.0, 16.0, 8.0])  # 2 cells right, 1 down
    _, a = tracker.masks(frame, det)
    _, b = tracker.masks(frame, moved)
    ys, xs = np.nonzero(a[0].reshape(h, w).numpy())
    ys2, xs2 = np.nonzero(b[0].reshape(h, w).numpy())
    assert len(ys) and len(ys2)
    assert xs2.min() - xs.min() == 2 and ys2.min() - ys.min() == 1


def test_tracks_keep_their_ids_on_a_still_video(sipmask, videos):
    """The same frame four times: every track started on frame 0 is continued by its own detection."""
    _, predictor = sipmask
    root, _ = videos
    image = next(iter(open_video(root / "crossing").frames()))
    tracker = CondInstTracker(predictor.model, TrackerConfig(new_track_score=0.2))
    per_frame = [dict(tracker.update(f)) for f in segment_frames(predictor, [image] * 4, batch_size=2)]
    assert len(per_frame[0]) > 3
    assert all(p == per_frame[0] for p in per_frame[1:])


@pytest.mark.slow
def test_video_and_evaluate_video_with_a_sipmask_checkpoint(sipmask, videos, tmp_path, capsys):
    weights, _ = sipmask
    root, ann = videos
    results, vis, metrics = tmp_path / "r.json", tmp_path / "vis.mp4", tmp_path / "m.json"
    assert main(["video", "--weights", str(weights), "--input", str(root / "crossing.mp4"), "--output", str(results),
                 "--vis", str(vis), "--no-progress", "--new-track-score", "0.2"]) == 0
    entries = json.loads(results.read_text())
    assert entries and all(len(e["segmentations"]) == 6 and e["category_id"] in (1, 2, 3) for e in entries)
    assert len(list(open_video(vis).frames())) == 6
    assert main(["evaluate-video", "--weights", str(weights), "--ann", str(ann), "--videos", str(root),
                 "--metrics", str(metrics), "--no-progress"]) == 0
    m = json.loads(metrics.read_text())
    assert 0 <= m["ap"]["AP"] <= 1 and "HOTA" in m["tracking"]
    print(f"\nrandom-weight SipMask (mechanics only): AP {m['ap']['AP']:.3f} HOTA {m['tracking']['HOTA']:.3f}")
