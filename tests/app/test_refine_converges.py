"""Issue 22's protocol on one held-out fruits_nuts photo (id 17, 11 objects) with the bundled model: a scripted
annotator (first click at the object's interior, then the centre of the largest error region, `bench.editor_refine`)
reaches IoU 0.85 within three clicks on every object (two on all but one), and no click lowers the IoU by more
than 0.01. The issue's target, two clicks on every object, is not met yet by one hazelnut (3,413 px): the strict
xfail below turns into a failure the day it is."""
from __future__ import annotations

import functools

import pytest

from bench.editor_refine import DEFAULT_WEIGHTS, FRUITS, noc, refine_run, worst_drop

pytestmark = pytest.mark.skipif(not (FRUITS / "trainval.json").is_file() or not DEFAULT_WEIGHTS.is_file(),
                                reason="fruits_nuts or the bundled model not found")


@functools.lru_cache(maxsize=1)
def photo_17_runs() -> dict:
    """{annotation id: IoU after each click} on photo 17 (deterministic: GrabCut's RNG is seeded)."""
    import tempfile
    from pathlib import Path

    from pycocotools.coco import COCO

    from app.service import Service

    coco = COCO(str(FRUITS / "trainval.json"))
    with tempfile.TemporaryDirectory() as tmp:
        service = Service.create(Path(tmp) / "ws", DEFAULT_WEIGHTS)
        try:
            image_id = service.images.add_files([FRUITS / "images" / coco.imgs[17]["file_name"]]).image_ids[0]
            return {ann["id"]: refine_run(service, image_id, coco.annToMask(ann).astype(bool), max_clicks=6)
                    for ann in coco.imgToAnns[17]}
        finally:
            service.close()


def test_every_object_of_a_held_out_photo_converges_without_a_step_back():
    runs = photo_17_runs()
    assert len(runs) == 11
    assert {k: noc(r, 0.85) for k, r in runs.items() if noc(r, 0.85) > 3} == {}
    assert sum(noc(r, 0.85) > 2 for r in runs.values()) <= 1
    assert {k: round(worst_drop(r), 3) for k, r in runs.items() if worst_drop(r) > 0.01} == {}


@pytest.mark.xfail(strict=True, reason="issue 22 target not met yet: one hazelnut of photo 17 needs 3 clicks")
def test_every_object_of_a_held_out_photo_reaches_iou_85_in_two_clicks():
    assert {k: noc(r, 0.85) for k, r in photo_17_runs().items() if noc(r, 0.85) > 2} == {}
