"""Mask propagation (condinst/video/propagate.py) on generated videos (tests/videokit.py) with the bundled model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import videokit
from condinst.errors import user_message
from condinst.video.propagate import PropagationError, agreement, candidate_centres, propagate
from condinst.video.reader import open_video
from testutils import REPO

WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture(scope="module")
def predictor():
    from condinst.predictor import Predictor

    return Predictor.from_weights(WEIGHTS)


def load(root, made, name):
    """Frames and, per object, its true (H, W) bool mask in every frame."""
    _, anns = made
    frames = list(open_video(root / name).frames())
    h, w = frames[0].shape[:2]
    truth = [[np.zeros((h, w), bool) if s is None else mask_utils.decode(s).astype(bool)
              for s in a["segmentations"]] for a in anns]
    return frames, truth


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossing")
    return load(root, videokit.crossing_video(root, frames=12), "crossing")


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    root = tmp_path_factory.mktemp("camera")
    return load(root, videokit.camera_video(root, frames=12), "camera")


def iou(a, b) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


@pytest.mark.slow
def test_propagated_masks_follow_a_moving_object(crossing, predictor):
    """The hazelnut moves down 20 px a frame: over 5 frames the propagated masks keep close to the
    truth (measured IoU 0.78-0.89) while the unchanged frame-0 mask falls to nothing (0.32 -> 0)."""
    frames, truth = crossing
    masks = truth[2]
    out = propagate(predictor, frames[0], masks[0], iter(frames[1:]), num_frames=5)
    assert out.stopped is None and [p.offset for p in out.frames] == [1, 2, 3, 4, 5]
    assert out.filters.iou > 0.7
    ours = [iou(p.mask, masks[p.offset]) for p in out.frames]
    copy = [iou(masks[0], masks[k]) for k in range(1, 6)]
    print(f"\npropagate {np.round(ours, 2)}, copy {np.round(copy, 2)}")
    assert min(ours) > 0.7
    assert all(o > c + 0.3 for o, c in zip(ours, copy))
    assert all(p.mask.shape == masks[0].shape and p.mask.dtype == bool for p in out.frames)
    assert all(0.3 <= p.confidence <= 1 for p in out.frames)
    ys = [np.nonzero(p.mask)[0].mean() for p in out.frames]
    assert all(b > a + 10 for a, b in zip(ys, ys[1:]))  # it moves down, frame after frame


@pytest.mark.slow
def test_propagation_stops_when_the_object_leaves(camera, predictor):
    """The camera pans right: object 4 of the photo is last in view on frame 7. Propagation stops
    there with the reason, instead of inventing masks for the frames it is gone."""
    frames, truth = camera
    masks = truth[4]
    last = max(k for k in range(len(frames)) if masks[k].any())
    assert 2 <= last < 10
    out = propagate(predictor, frames[0], masks[0], frames[1:], num_frames=10)
    assert out.stopped is not None and "lost at frame" in out.stopped
    assert len(out.frames) <= last
    assert len(out.frames) >= last - 2  # it followed the object while it was in view
    assert all(iou(p.mask, masks[p.offset]) > 0.5 for p in out.frames)


def test_bad_inputs_are_one_line_user_errors(crossing, predictor):
    frames, truth = crossing
    image, mask = frames[0], truth[2][0]
    cases = [(np.zeros_like(mask), "the mask is empty"),
             (mask[:-1], "the mask is 480x359 but the frame is 480x360"),
             (np.stack([mask, mask]), "one (height, width) array")]
    for bad, needle in cases:
        with pytest.raises(PropagationError) as e:
            propagate(predictor, image, bad, frames[1:], 3)
        assert needle in user_message(e.value) and "\n" not in user_message(e.value)
    with pytest.raises(PropagationError, match="positive integer"):
        propagate(predictor, image, mask, frames[1:], 0)
    with pytest.raises(PropagationError, match="frame 1 after the corrected one is 240x180"):
        propagate(predictor, image, mask, [frames[1][:180, :240]], 3)


def test_agreement_rewards_the_displacement_that_matches():
    prev = torch.zeros(10, 12, dtype=torch.bool)
    prev[2:5, 3:6] = True
    moved = torch.zeros_like(prev)
    moved[4:7, 6:9] = True  # prev moved by (dx, dy) = (3, 2) cells
    scores = agreement(moved[None].expand(3, -1, -1), prev, torch.tensor([[3.0, 2.0], [0.0, 0.0], [3.0, 0.0]]))
    assert scores[0] == 1 and scores[1] == 0 and 0 < scores[2] < 1
    centres = candidate_centres(torch.tensor([40.0, 24.0]), torch.tensor([4.0, 4.0]), cells=1, stride=8)
    assert centres.shape == (10, 2) and centres[4].tolist() == [40.0, 24.0] and centres[-1].tolist() == [4.0, 4.0]


@pytest.mark.slow  # about 10 s: 9 propagations and the tracker
def test_bench_prints_the_table_and_writes_json(tmp_path, capsys):
    from bench import propagate as bench

    out = tmp_path / "propagate.json"
    payload = bench.main(["--videos", "crossing", "--horizon", "2", "--threads", "1", "--out", str(out)])
    assert out.is_file() and "k=2" in capsys.readouterr().out
    rows = {(r["input"], r["method"]): r for r in payload["results"]}
    assert set(rows) == {(i, m) for i in ("true", "eroded", "dilated") for m in bench.METHODS}
    assert all(r["n1"] == 3 for r in rows.values())  # the three objects of the crossing video
    assert rows["true", "propagate"]["k2"] > rows["true", "copy"]["k2"] + 0.3
