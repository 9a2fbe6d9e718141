"""YouTube-VIS annotations as a per-frame training set, through `CocoInstances` and `condinst train`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import videokit
from synthetic_training import tiny_train_config
from training.data import CocoInstances, DatasetError

pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture(scope="module")
def ytvis(tmp_path_factory):
    root = tmp_path_factory.mktemp("ytvis")
    ann = videokit.write_ytvis(root / "train.json", [videokit.crossing_video(root, frames=4),
                                                      videokit.camera_video(root, frames=3)])
    return root, ann


def test_every_listed_frame_is_an_image_with_its_objects(ytvis):
    root, ann = ytvis
    data = json.loads(ann.read_text())
    ds = CocoInstances(ann, root)
    assert len(ds) == 4 + 3 and ds.class_names == ("date", "fig", "hazelnut")
    assert [r.file_name for r in ds.images[:2]] == ["crossing/00000.jpg", "crossing/00001.jpg"]
    non_null = sum(s is not None for a in data["annotations"] for s in a["segmentations"])
    assert sum(len(r.annotations) for r in ds.images) == non_null
    # frame 2 of the camera video: its record holds each object's mask of that frame
    record = ds[4 + 2]
    assert record["image"].shape == (360, 480, 3)
    frame_masks = [a["segmentations"][2] for a in data["annotations"] if a["video_id"] == 2 and a["segmentations"][2]]
    got = sorted(int(mask_utils.area(a["segmentation"])) for a in record["annotations"])
    assert got == sorted(int(mask_utils.area(m)) for m in frame_masks)
    assert all(a["class_index"] == a["category_id"] - 1 for a in record["annotations"])
    assert ds.has_instances().all()


def test_bad_ytvis_files_are_one_line_dataset_errors(ytvis, tmp_path):
    root, ann = ytvis
    data = json.loads(ann.read_text())
    data["annotations"][0]["segmentations"] = data["annotations"][0]["segmentations"][:-1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="one entry .* per frame"):
        CocoInstances(bad, root)
    data = json.loads(ann.read_text())
    data["videos"][0]["file_names"][1] = "crossing/missing.jpg"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="image file not found"):
        CocoInstances(bad, root)


@pytest.mark.slow
def test_condinst_train_takes_a_ytvis_file(ytvis, tmp_path):
    from training.cli import main

    root, ann = ytvis
    config = tmp_path / "tiny.json"
    cfg = tiny_train_config()
    cfg.fcos.num_classes = 3
    config.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--train-ann", str(ann), "--train-images", str(root),
                 "--output-dir", str(out), "--max-iter", "2", "--num-workers", "0", "--device", "cpu",
                 "--no-progress"]) == 0
    assert (out / "model_final.pth").is_file()
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(np.isfinite(r.get("total_loss", np.nan)) for r in losses)
