"""The Explain view of a SipMask model (issue 16): the same page, with SipMask's panels (coefficient sets,
quadrant partials, assembly, basis masks) for a selected instance and for a clicked point."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.errors import AppError
from app.annotate.explain_page import LABELS
from app.service import Service
from app.annotate.sipmask_explain import LABELS as SIPMASK_LABELS
from condinst.checkpoint import save_checkpoint
from condinst.errors import UserError
from testutils import tiny_sipmask


@pytest.fixture(scope="module")
def sipmask_service(tmp_path_factory, image_paths):
    model, cfg = tiny_sipmask()
    weights = save_checkpoint(tmp_path_factory.mktemp("sipmask") / "sipmask.pth", model, cfg)
    service = Service.create(tmp_path_factory.mktemp("ws"), weights)
    service.images.add_files(image_paths[:1])
    yield service
    service.close()


def test_explain_a_sipmask_instance(sipmask_service):
    service = sipmask_service
    view = service.initial_view()
    inst = service.ws.instances(view.image_id)[0]
    exp = service.explain.explain_selected(service.actions.select(view, inst.id))
    record = service.ws.get_image_record(view.image_id)
    assert exp.location.shape == (record.height, record.width, 3)
    for picture in (exp.coord_x, exp.coord_y, exp.features, exp.filters, exp.probability):
        assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8 and picture.std() > 0
    assert exp.labels == SIPMASK_LABELS and exp.labels.keys() == LABELS.keys()
    assert "4 x 32 = 128 numbers" in exp.text and "FPN level **P" in exp.text and "split into quadrants" in exp.text
    # the panel shows the instance the model stored (same detection, same score)
    assert f"score {inst.score:.3f}" in exp.text


def test_explain_a_point_and_add_it_with_sipmask(sipmask_service):
    service = sipmask_service
    view = service.initial_view()
    before = len(service.ws.instances(view.image_id))
    view, exp = service.explain.explain_point(view, 100, 120)
    assert "Point (100, 120)" in exp.text and "box and coefficients" in exp.text
    view, message = service.explain.add_probe(view)
    assert "Added instance" in message and len(service.ws.instances(view.image_id)) == before + 1
    explainer = service.explain._explainer(view.image_id)
    with pytest.raises(UserError, match="dynamic filters"):  # click-to-refine: one line, the app keeps serving
        explainer.candidates([(100, 120)])
    with pytest.raises(AppError):
        service.explain.explain_point(view, 10**6, 5)


def test_the_explain_labels_follow_the_model(sipmask_service):
    """SipMask's pictures come relabelled; the next CondInst explanation (after a model switch) puts the
    page's labels back once, then plain pictures as before."""
    from dataclasses import replace

    from app.web.handlers import Handlers

    service = sipmask_service
    handlers = Handlers(service)
    view = service.initial_view()
    view = service.actions.select(view, service.ws.instances(view.image_id)[0].id)
    exp = service.explain.explain_selected(view)
    out = handlers.explained(view, exp)
    assert out[1]["label"] == SIPMASK_LABELS["location"] and out[0].explain_relabelled
    condinst = replace(exp, labels=dict(LABELS))  # what a CondInst explanation carries
    out = handlers.explained(out[0], condinst)
    assert out[1]["label"] == LABELS["location"] and not out[0].explain_relabelled
    out = handlers.explained(out[0], condinst)
    assert isinstance(out[1], str) and Path(out[1]).is_file()  # plain pictures again (app.web.picture_files)
