"""An exported workspace is a training set: our COCO loader reads it back with identical masks."""
from __future__ import annotations

import numpy as np
import pytest

from app.interop.export import export_coco
from app.store.workspace import Workspace
from condinst.config import CondInstConfig
from training.data import CocoInstances
from training.transforms import transform_record


@pytest.mark.parametrize("mask_format", ["rle", "polygon"])
def test_export_loads_in_the_training_loader_with_the_same_masks(tmp_path, mask_format):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_categories({3: "fig", 11: "hazelnut"})  # ids with gaps, kept as they are
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    image_id = ws.add_image(image, file_name="tray.png")
    ring = np.zeros((120, 160), bool)
    ring[20:80, 30:90] = True
    ring[40:60, 50:70] = False  # a hole
    blob = np.zeros((120, 160), bool)
    blob[90:110, 100:150] = True
    blob[5:15, 140:155] = True  # a second part
    ws.add_instance(image_id, 3, ring)
    ws.add_instance(image_id, 11, blob)
    json_path = export_coco(ws, tmp_path / "export", mask_format=mask_format)
    ws.close()

    data = CocoInstances(json_path, json_path.parent.parent / "images")
    assert data.category_ids == (3, 11) and data.class_names == ("fig", "hazelnut")
    record = data[0]
    assert np.array_equal(record["image"], image)
    sample = transform_record(record, CondInstConfig(), None, 10_000, False)
    masks = sample.gt_masks.numpy()
    assert sample.gt_classes.tolist() == [0, 1]
    if mask_format == "rle":
        assert np.array_equal(masks[0], ring) and np.array_equal(masks[1], blob)
    else:  # polygons fill holes; parts are kept
        assert np.array_equal(masks[1], blob)
        assert (masks[0] & ring).sum() == ring.sum()
