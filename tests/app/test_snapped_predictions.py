"""Issue 22: the app stores the model's masks with their boundaries snapped to the image's edges, unless it is
started with --raw-masks; the bundled model's held-out photo then has more objects right as predicted."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from app.service import Service
from bench.editor_refine import DEFAULT_WEIGHTS, FRUITS
from bench.labeling.geometry import ious

pytestmark = pytest.mark.skipif(not (FRUITS / "trainval.json").is_file() or not DEFAULT_WEIGHTS.is_file(),
                                reason="needs ../shared/datasets/fruits_nuts and the bundled model")


def best_ious(tmp_path, snap_edges: bool, coco_id: int = 15) -> tuple[np.ndarray, list]:
    """Each ground-truth object's best IoU among the stored instances of a fresh workspace; the instances."""
    coco = COCO(str(FRUITS / "trainval.json"))
    service = Service.create(tmp_path / f"ws-{snap_edges}", DEFAULT_WEIGHTS, snap_edges=snap_edges)
    try:
        info = coco.imgs[coco_id]
        image_id = service.images.add_files([FRUITS / "images" / info["file_name"]]).image_ids[0]
        instances = service.ws.instances(image_id)
        gts = [coco.annToMask(a).astype(bool) for a in coco.imgToAnns[coco_id]]
        return ious(gts, instances).max(axis=1), instances
    finally:
        service.close()


def test_snapped_predictions_are_closer_to_the_ground_truth_and_keep_the_detections(tmp_path):
    raw, raw_instances = best_ious(tmp_path, snap_edges=False)
    snapped, instances = best_ious(tmp_path, snap_edges=True)
    assert [(i.score, i.category_id) for i in instances] == [(i.score, i.category_id) for i in raw_instances]
    assert sum(a.mask.sum() != b.mask.sum() for a, b in zip(instances, raw_instances)) >= len(instances) // 2
    assert (snapped >= raw - 0.01).all(), (raw, snapped)  # no object loses
    assert (snapped >= 0.85).sum() >= (raw >= 0.85).sum() + 2, (raw, snapped)  # held-out photo 15: 4 -> 7
    assert snapped.mean() >= raw.mean() + 0.02


def test_the_app_and_the_label_studio_backend_snap_by_default_and_raw_masks_turns_it_off():
    from app.__main__ import build_parser
    from app.interop.ml_backend.cli import build_parser as backend_parser

    assert build_parser().parse_args([]).raw_masks is False
    assert build_parser().parse_args(["--raw-masks"]).raw_masks is True
    assert backend_parser().parse_args(["ml-backend", "--raw-masks"]).raw_masks is True
