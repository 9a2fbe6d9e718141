"""YouTube-VIS AP/AR and tracking metrics on cases worked out by hand (tiny 4x4 videos)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from condinst.video.evaluation import spatio_temporal_iou, tracking_metrics, vis_ap
from condinst.video.ytvis import YtvisError, load_dataset, load_results


def box(y0, y1, x0, x1, size=(4, 4)):
    m = np.zeros(size, np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


SQUARE = box(0, 2, 0, 2)  # area 4
OTHER = box(2, 4, 2, 4)  # area 4, disjoint from SQUARE
HALF = box(0, 2, 0, 1)  # area 2, inside SQUARE


def dataset(tmp_path, tracks, frames=2, categories=(1, 2)):
    data = {"videos": [{"id": 7, "file_names": [f"v/{t}.jpg" for t in range(frames)], "height": 4, "width": 4}],
            "categories": [{"id": c, "name": f"c{c}"} for c in categories],
            "annotations": [{"id": i + 1, "video_id": 7, "category_id": c, "iscrowd": 0, "segmentations": segs}
                            for i, (c, segs) in enumerate(tracks)]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_dataset(path)


def results(tmp_path, ds, entries):
    path = tmp_path / "res.json"
    path.write_text(json.dumps([{"video_id": 7, "category_id": c, "score": s, "segmentations": segs}
                                for c, s, segs in entries]))
    return load_results(path, ds)


def test_spatio_temporal_iou_sums_over_frames(tmp_path):
    ds = dataset(tmp_path, [(1, [SQUARE, SQUARE])])
    g = ds.annotations[0]["segmentations"]
    r = results(tmp_path, ds, [(1, 1.0, [SQUARE, None]), (1, 1.0, [HALF, HALF]), (1, 1.0, [HALF, None])])
    # frame 1 missed: 4 / (4 + 4); half in both frames: 4 / 8; half then nothing: 2 / (4 + 4)
    assert spatio_temporal_iou(r[0]["segmentations"], g) == pytest.approx(0.5)
    assert spatio_temporal_iou(r[1]["segmentations"], g) == pytest.approx(0.5)
    assert spatio_temporal_iou(r[2]["segmentations"], g) == pytest.approx(0.25)
    # a prediction where the object is absent adds its area to the union: 4 / (4 + 4 + 4)
    ds3 = dataset(tmp_path, [(1, [SQUARE, SQUARE, None])], frames=3)
    r3 = results(tmp_path, ds3, [(1, 1.0, [SQUARE, None, OTHER])])
    assert spatio_temporal_iou(r3[0]["segmentations"], ds3.annotations[0]["segmentations"]) == pytest.approx(1 / 3)


def test_ap_of_hand_worked_cases(tmp_path):
    ds = dataset(tmp_path, [(1, [SQUARE, SQUARE])])
    perfect = vis_ap(ds, results(tmp_path, ds, [(1, 0.9, [SQUARE, SQUARE])]))
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR1"] == pytest.approx(1.0)
    # IoU 0.5 exactly: a match at the 0.50 threshold only -> AP50 1, AP75 0, AP (mean of 10 thresholds) 0.1
    half = vis_ap(ds, results(tmp_path, ds, [(1, 0.9, [SQUARE, None])]))
    assert (half["AP"], half["AP50"], half["AP75"]) == pytest.approx((0.1, 1.0, 0.0))
    # a false positive ranked above the true one: precision 1/2 at every recall -> AP 0.5
    ranked = vis_ap(ds, results(tmp_path, ds, [(1, 0.9, [OTHER, OTHER]), (1, 0.5, [SQUARE, SQUARE])]))
    assert ranked["AP"] == pytest.approx(0.5) and ranked["AR1"] == pytest.approx(0.0) and ranked["AR10"] == 1.0
    # the right masks under the wrong category count for nothing
    assert vis_ap(ds, results(tmp_path, ds, [(2, 0.9, [SQUARE, SQUARE])]))["AP"] == pytest.approx(0.0)


def test_id_switch_and_hota_by_hand(tmp_path):
    ds = dataset(tmp_path, [(1, [SQUARE] * 4)], frames=4)
    one = tracking_metrics(ds, results(tmp_path, ds, [(1, 0.9, [SQUARE] * 4)]))
    assert one["IDSW"] == 0 and one["HOTA"] == pytest.approx(1.0) and one["MOTA"] == pytest.approx(1.0)
    # the object changes id half way: 1 switch; every frame detected (DetA 1) but each id covers half of the
    # object's frames (AssA 2/4), so HOTA = sqrt(1 * 0.5) at every alpha; MOTA = (4 - 1) / 4
    split = results(tmp_path, ds, [(1, 0.9, [SQUARE, SQUARE, None, None]), (1, 0.8, [None, None, SQUARE, SQUARE])])
    m = tracking_metrics(ds, split)
    assert m["IDSW"] == 1 and m["tracks"] == 2
    assert (m["DetA"], m["AssA"], m["HOTA"], m["MOTA"]) == pytest.approx((1.0, 0.5, math.sqrt(0.5), 0.75))
    # below min_score the second half is not tracked at all: DetA 2/4, AssA 2/4 -> HOTA 0.5, no switch
    low = tracking_metrics(ds, split, min_score=0.85)
    assert low["IDSW"] == 0 and low["tracks"] == 1
    assert (low["DetA"], low["HOTA"]) == pytest.approx((0.5, 0.5))


def test_results_are_checked_against_the_dataset(tmp_path):
    ds = dataset(tmp_path, [(1, [SQUARE, SQUARE])])
    path = tmp_path / "bad.json"
    cases = [([{"video_id": 8, "category_id": 1, "score": 1, "segmentations": [None, None]}], "video_id 8"),
             ([{"video_id": 7, "category_id": 5, "score": 1, "segmentations": [None, None]}], "category id 5"),
             ([{"video_id": 7, "category_id": 1, "score": 1, "segmentations": [None]}], "one entry"),
             ([{"video_id": 7, "category_id": 1, "score": 1, "segmentations": [box(0, 1, 0, 1, (5, 4)), None]}],
              "mask size"),
             ({"not": "a list"}, "list of results")]
    for entries, needle in cases:
        path.write_text(json.dumps(entries))
        with pytest.raises(YtvisError, match=needle):
            load_results(path, ds)
    (tmp_path / "x.json").write_text(json.dumps({"videos": [], "annotations": []}))
    with pytest.raises(YtvisError, match="categories"):
        load_dataset(tmp_path / "x.json")
