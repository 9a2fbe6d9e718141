"""Issue 22: whole held-out photos made right by the scripted annotator (bench/editor_photos.py)."""
from __future__ import annotations

import json

import pytest

from bench.editor_refine import DEFAULT_WEIGHTS, FRUITS


@pytest.mark.skipif(not (FRUITS / "trainval.json").is_file() or not DEFAULT_WEIGHTS.is_file(),
                    reason="needs ../shared/datasets/fruits_nuts and the bundled model")
def test_a_held_out_photo_is_made_right_and_every_action_is_booked(tmp_path):
    from bench import editor_photos

    out = tmp_path / "photos.json"
    assert editor_photos.main(["--images", "17", "--output", str(out), "--threads", "1"]) == 0
    payload = json.loads(out.read_text())
    photo, = payload["photos"]
    assert photo["complete"], photo  # every object at IoU >= 0.85 with its class, nothing extra
    assert photo["objects"] == 11  # the ground truth of image 17
    assert sum(n for _, n in photo["steps"]) == photo["actions"] == sum(photo["by_kind"].values())
    booked = {what for what, _ in photo["steps"]}
    assert "accepted as predicted" in booked and "mark reviewed" in booked
    assert sum(k["count"] for k in payload["by_kind"] if k["kind"] == "accepted as predicted") \
        == photo["outcomes"]["accepted"]


def test_the_photos_bench_refuses_an_unknown_image_before_loading_anything(tmp_path, capsys):
    from bench import editor_photos

    assert editor_photos.main(["--images", "99999", "--output", str(tmp_path / "x.json")]) == 2
    assert "no fruits_nuts image with id 99999" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
