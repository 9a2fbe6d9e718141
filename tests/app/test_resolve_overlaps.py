"""Resolve overlaps (issue 22): the model's duplicates of one object go in ONE action and ONE undo step; a
person's instance is never removed; the message says what went. Through the service and the edit channel."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from app.service import Service
from app.view import View


@pytest.fixture
def service(tmp_path, tiny_weights, samples_dir):
    svc = Service.create(tmp_path / "ws", tiny_weights, samples_dir=samples_dir)
    yield svc
    svc.close()


def box_mask(shape, x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_resolve_overlaps_removes_the_models_duplicates_in_one_undo_step(service, image_paths):
    service.images.add_files(image_paths[:1])
    ws = service.ws
    image = ws.list_images()[0]
    for inst in ws.instances(image.id):  # start from a known set: the model's own instances gone
        ws.delete_instance(inst.id)
    shape = (image.height, image.width)
    a = box_mask(shape, 10, 10, 110, 110)
    b = box_mask(shape, 12, 12, 112, 112)  # IoU with a: 98*98 / (2*100*100 - 98*98) = 0.92
    c = box_mask(shape, 300, 300, 400, 400)
    d = box_mask(shape, 150, 150, 250, 250)
    best = ws.add_instance(image.id, 1, a, source="model", score=0.9)
    dupe = ws.add_instance(image.id, 2, b, source="model", score=0.8)  # the same object, another class
    alone = ws.add_instance(image.id, 1, c, source="model", score=0.7)
    person = ws.add_instance(image.id, 1, d, source="user")  # a person's instance is kept whatever the scores
    model_on_person = ws.add_instance(image.id, 2, d, source="model", score=0.95)
    view = View(image_id=image.id, selected=dupe, threshold=0.3)
    view, message = service.actions.resolve_overlaps(view)
    live = {inst.id for inst in ws.instances(image.id)}
    assert live == {best, alone, person} and view.selected is None
    assert "removed 2 duplicate" in message and f"#{dupe} (IoU 0.92 with #{best})" in message
    assert f"#{model_on_person} (IoU 1.00 with #{person})" in message
    service.actions.undo(view)  # one undo brings it back
    assert {inst.id for inst in ws.instances(image.id)} == {best, dupe, alone, person, model_on_person}
    _, again = service.actions.resolve_overlaps(replace(view, threshold=0.96))  # the model instances are not shown now
    assert again.startswith("No overlaps") and not ws.get_instance(dupe).deleted


def test_resolve_overlaps_when_images_are_segmented(service, image_paths, monkeypatch):
    """`app serve --resolve-overlaps IOU`: the model's duplicates are never stored; without it every prediction is."""
    from app.store.masks import encode_with_preview
    from app.store.records import Prediction

    image = image_paths[0]
    width, height = Image.open(image).size
    shape = (height, width)
    cat = service.ws.categories()[0].id
    made = [Prediction(cat, 0.8, encode_with_preview(box_mask(shape, 12, 12, 112, 112))),  # a duplicate of the next
            Prediction(cat, 0.9, encode_with_preview(box_mask(shape, 10, 10, 110, 110))),
            Prediction(cat, 0.7, encode_with_preview(box_mask(shape, 150, 150, 250, 250)))]
    monkeypatch.setattr(service.session, "predictions", lambda key, load: list(made))
    service.images.overlap_iou = 0.6
    first = service.images.add_files([image]).image_ids[0]
    assert sorted(inst.score for inst in service.ws.instances(first)) == pytest.approx([0.7, 0.9])
    service.images.overlap_iou = None
    service.images.segment([first])  # the model again, nothing kept back now
    assert sorted(inst.score for inst in service.ws.instances(first)) == pytest.approx([0.7, 0.8, 0.9])


def test_the_app_refuses_an_overlap_iou_outside_0_1_before_loading_anything(tmp_path):
    import subprocess
    import sys

    for bad in ("0", "1.5", "nan", "x"):
        out = subprocess.run([sys.executable, "-m", "app", "--resolve-overlaps", bad, "--workspace",
                              str(tmp_path / "ws")], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--resolve-overlaps" in out.stderr, out.stderr
    assert not (tmp_path / "ws").exists()
