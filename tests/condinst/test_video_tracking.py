"""Tracking on generated videos (tests/videokit.py) with the bundled fruits_nuts model.

The model runs once per video (module fixtures); both trackers then link the same per-frame results.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import videokit
from condinst.postprocess import ImageResult
from condinst.video.evaluation import tracking_metrics, vis_ap
from condinst.video.pipeline import make_tracker
from condinst.video.reader import open_video
from condinst.video.segmenter import Frame, segment_frames
from condinst.video.tracker import CondInstTracker, TrackerConfig, greedy_assignment, pairwise_mask_iou
from condinst.video.vis_results import VideoTracks
from condinst.video.ytvis import load_dataset
from testutils import REPO

WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture(scope="module")
def predictor():
    from condinst.predictor import Predictor

    return Predictor.from_weights(WEIGHTS)


@pytest.fixture(scope="module")
def crossing(tmp_path_factory, predictor):
    root = tmp_path_factory.mktemp("crossing")
    ann = videokit.write_ytvis(root / "ytvis.json", [videokit.crossing_video(root, frames=12)])
    frames = list(segment_frames(predictor, open_video(root / "crossing").frames(), batch_size=4))
    return load_dataset(ann), frames


@pytest.fixture(scope="module")
def dates(tmp_path_factory, predictor):
    """Two dates crossing on one line, the front one hiding the other almost completely (frames 5-7)."""
    root = tmp_path_factory.mktemp("dates")
    ann = videokit.write_ytvis(root / "ytvis.json",
                               [videokit.crossing_video(root, frames=12, name="dates", same_class=True)])
    frames = list(segment_frames(predictor, open_video(root / "dates").frames(), batch_size=4))
    return load_dataset(ann), frames


def run_tracker(kind, predictor, frames, video_id=1, config=None):
    tracker = make_tracker(kind, predictor, config or TrackerConfig(new_track_score=0.5))
    tracks = VideoTracks()
    for frame in frames:
        tracks.add(frame.index, frame.result, tracker.update(frame))
    ids = [predictor.category_id(i) for i in range(predictor.cfg.fcos.num_classes)]
    return tracks.results(video_id, ids, len(frames))


def as_loaded(entries, dataset):
    from condinst.video.cli import load_results_from_entries

    return load_results_from_entries(entries, dataset)


@pytest.mark.slow
def test_filters_recentred_at_the_new_location_segment_the_moved_object(crossing, predictor):
    """The hazelnut moves down ~20 input pixels a frame: its frame-0 filters, moved by that shift and
    applied to frame 1's features, segment it there; left where they were, they miss half of it."""
    dataset, frames = crossing
    f0, f1 = frames[0], frames[1]
    model = predictor.model
    hazelnut = [k for k in range(len(f0.result)) if int(f0.result.classes[k]) == 2 and f0.result.boxes[k, 0] > 300]
    assert hazelnut, "the model finds the hazelnut"
    k0 = hazelnut[0]
    scale = f0.input_size[0] / f0.image.shape[0]
    shift = torch.tensor([0.0, 220 / 11 * scale])  # videokit's path: y from 10 to 230 over 12 frames
    tracker = CondInstTracker(model)
    d0 = f0.result.detections.select(torch.tensor([k0]))
    moved = d0.select(torch.tensor([0]))
    moved.locations = d0.locations + shift
    _, stay = tracker.masks(f1, d0)
    _, go = tracker.masks(f1, moved)
    _, own = tracker.masks(f1, f1.result.detections)  # frame 1's detections with their own filters
    target = pairwise_mask_iou(go, own).argmax()
    assert pairwise_mask_iou(go, own[target : target + 1]).item() > 0.7
    assert pairwise_mask_iou(stay, own[target : target + 1]).item() < pairwise_mask_iou(go, own[target : target + 1]).item() - 0.2


def test_condinst_tracks_follow_objects_through_the_crossing(crossing, predictor):
    dataset, frames = crossing
    ours = as_loaded(run_tracker("condinst", predictor, frames), dataset)
    base = as_loaded(run_tracker("bytetrack", predictor, frames), dataset)
    m_ours, m_base = tracking_metrics(dataset, ours), tracking_metrics(dataset, base)
    ap_ours, ap_base = vis_ap(dataset, ours), vis_ap(dataset, base)
    print(f"\ncondinst: IDSW {m_ours['IDSW']} HOTA {m_ours['HOTA']:.3f} AP {ap_ours['AP']:.3f}; "
          f"bytetrack: IDSW {m_base['IDSW']} HOTA {m_base['HOTA']:.3f} AP {ap_base['AP']:.3f}")
    assert m_ours["IDSW"] <= 1 and m_ours["HOTA"] > 0.6 and ap_ours["AP"] > 0.4
    assert m_ours["IDSW"] <= m_base["IDSW"]
    # the date and the hazelnut (well detected) are each one track over all 12 frames
    full = [r for r in ours if sum(s is not None for s in r["segmentations"]) == 12]
    assert {r["category_id"] for r in full} >= {1, 3}


@pytest.mark.slow
def test_same_class_objects_keep_their_ids_through_an_occlusion(dates, predictor):
    dataset, frames = dates
    ours = as_loaded(run_tracker("condinst", predictor, frames), dataset)
    base = as_loaded(run_tracker("bytetrack", predictor, frames), dataset)
    m_ours, m_base = tracking_metrics(dataset, ours), tracking_metrics(dataset, base)
    print(f"\ncondinst: IDSW {m_ours['IDSW']} HOTA {m_ours['HOTA']:.3f}; bytetrack: IDSW {m_base['IDSW']} "
          f"HOTA {m_base['HOTA']:.3f}")
    assert m_ours["IDSW"] == 0 and m_ours["HOTA"] > 0.7
    assert m_ours["HOTA"] >= m_base["HOTA"]
    dates_tracks = [r for r in ours if r["category_id"] == 1 and r["score"] >= 0.5]
    assert len(dates_tracks) == 2  # one track per date, none for the merged detections while they overlap


def drop(frame: Frame, keep) -> Frame:
    """`frame` with only the detections `keep` (bool) left: a detector miss, made on purpose."""
    r = frame.result
    idx = torch.as_tensor(keep).nonzero().squeeze(1)
    result = ImageResult(r.boxes[idx], r.scores[idx], r.classes[idx], r.instance_masks.select(idx),
                         r.detections.select(idx), r.image_size, r.input_size)
    return Frame(frame.index, frame.image, result, frame.mask_feats, frame.input_size, frame.seconds)


def test_a_track_missed_for_a_few_frames_keeps_its_id(crossing, predictor):
    """Every detection on the hazelnut's side (x > 300) is removed in frames 4-6: its track coasts on its
    velocity and the same id picks it up again at frame 7; with max_lost 2 it ends and a new id starts."""
    _, frames = crossing
    hidden = [drop(f, f.result.boxes[:, 0] <= 300) if 4 <= f.index <= 6 else f for f in frames]

    def hazelnut_ids(max_lost):
        tracker = CondInstTracker(predictor.model, TrackerConfig(new_track_score=0.5, max_lost=max_lost))
        ids = {}
        for f in hidden:
            for track_id, k in tracker.update(f):
                if int(f.result.classes[k]) == 2 and f.result.boxes[k, 0] > 300 and f.result.scores[k] > 0.5:
                    ids.setdefault(f.index, set()).add(track_id)
        return ids

    ids = hazelnut_ids(max_lost=10)
    assert not any(4 <= t <= 6 for t in ids)
    assert ids[3] == ids[7] == ids[11] and len(ids[3]) == 1
    short = hazelnut_ids(max_lost=2)
    assert short[7] != short[3]


def test_greedy_assignment_and_mask_iou():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    b = torch.tensor([[0, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    iou = pairwise_mask_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[0, 2 / 3, 0], [0.5, 0.25, 0]]))
    score = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.95, 0.0]])
    # best pair first (1,1); row 0 then takes what is left and allowed
    assert greedy_assignment(score, torch.ones_like(score, dtype=torch.bool)) == [(1, 1), (0, 0)]
    assert greedy_assignment(score, iou > 0.3) == [(0, 1), (1, 0)]
    assert greedy_assignment(score[:0], iou[:0] > 0) == []
