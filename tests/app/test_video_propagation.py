"""Propagating a frame's instance to the next frames in the app (app/video/propagation.py) with the bundled model:
preview, accept as one undo step, discard; reviewed frames and other people's edits are never overwritten."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import videokit
from app.view import View
from app.store.history import StaleEdit, acting
from app.errors import ServiceError
from testutils import REPO

WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    videokit.crossing_video(out, frames=16, mp4=True)  # ~19 px a frame (within the first frame's search)
    return out / "crossing.mp4"


@pytest.fixture
def service(video_service, clip):
    return video_service(clip, weights=WEIGHTS)


def start(service):
    """A view of frame 0 with the instance of the longest track selected, and that track's masks per frame."""
    track = max(service.tracks.tracks(1), key=lambda t: len(t.frames))
    assert track.frames[:4] == (0, 1, 2, 3)
    frames = service.sequences.frame_ids(1)
    inst = next(i for i in service.ws.instances(frames[0]) if i.track_id == track.id)
    return View(image_id=frames[0], selected=inst.id), track.id, frames


def track_masks(service, frames, track_id):
    return {k: i for k, f in enumerate(frames) for i in service.ws.instances(f) if i.track_id == track_id}


def test_preview_accept_as_one_undo_step_and_discard(service):
    view, track_id, frames = start(service)
    before = {k: i.mask for k, i in track_masks(service, frames, track_id).items()}
    with acting("anna"):
        view, message = service.propagation.preview(view, 3)
    assert "3 frame(s)" in message and view.propagation is not None
    proposed = [view.propagation.mask(k) for k in range(3)]
    assert all(np.logical_and(m, before[k + 1]).sum() / np.logical_or(m, before[k + 1]).sum() > 0.6
               for k, m in enumerate(proposed))  # the same object as the tracker's instance there
    assert {k: i.mask.tobytes() for k, i in track_masks(service, frames, track_id).items()} == \
        {k: m.tobytes() for k, m in before.items()}  # a preview stores nothing
    view2, message = service.propagation.discard(view)
    assert view2.propagation is None and "Discarded" in message
    with acting("anna"):
        view, message = service.propagation.accept(view)
    assert view.propagation is None and "3 frame(s)" in message
    after = track_masks(service, frames, track_id)
    for k in (1, 2, 3):
        assert np.array_equal(after[k].mask, proposed[k - 1]) and after[k].user_edited
    assert np.array_equal(after[4].mask, before[4])
    with acting("anna"):
        entry = service.ws.undo(frames[0])
    assert entry is not None and entry.blocked is None
    assert all(np.array_equal(i.mask, before[k]) for k, i in track_masks(service, frames, track_id).items())
    with pytest.raises(ServiceError, match="Nothing to accept"):
        service.propagation.accept(view)


def test_reviewed_frames_and_other_peoples_edits_are_not_overwritten(service):
    view, track_id, frames = start(service)
    service.ws.set_reviewed(frames[3])
    with acting("anna"):
        preview, message = service.propagation.preview(view, 5)
    assert len(preview.propagation.frames) == 2 and "frame 3 is reviewed" in message
    bob_instance = track_masks(service, frames, track_id)[1]
    with acting("bob"):
        service.ws.edit_masks(frames[1], {bob_instance.id: np.roll(bob_instance.mask, 2, axis=1)}, "brush")
    with acting("anna"), pytest.raises(ServiceError, match=r"frame 1: instance #\d+ of this track was changed by bob"):
        service.propagation.preview(view, 5)
    # bob edits after anna's preview: her accept is refused as a whole, nothing written
    service.ws.set_reviewed(frames[3], False)
    with acting("bob"):
        service.ws.undo(frames[1])
    with acting("anna"):
        preview, _ = service.propagation.preview(view, 3)
    target = track_masks(service, frames, track_id)[2]
    with acting("bob"):
        service.ws.edit_masks(frames[2], {target.id: np.roll(target.mask, 2, axis=0)}, "brush")
    kept = {k: i.mask.tobytes() for k, i in track_masks(service, frames, track_id).items()}
    with acting("anna"), pytest.raises(StaleEdit, match="changed by bob"):
        service.propagation.accept(preview)
    assert {k: i.mask.tobytes() for k, i in track_masks(service, frames, track_id).items()} == kept


def test_bad_requests_are_one_clear_message(service):
    view, _, frames = start(service)
    with pytest.raises(ServiceError, match="Select the instance"):
        service.propagation.preview(replace(view, selected=None), 3)
    with pytest.raises(ServiceError, match="1 to 50 frames"):
        service.propagation.preview(view, 0)
    last = replace(view, image_id=frames[-1], selected=service.ws.instances(frames[-1])[0].id)
    with pytest.raises(ServiceError, match="last frame"):
        service.propagation.preview(last, 3)


def test_a_frame_reviewed_between_preview_and_accept_refuses_the_accept(service):
    view, track_id, frames = start(service)
    with acting("anna"):
        preview, _ = service.propagation.preview(view, 3)
    service.ws.set_reviewed(frames[2])
    kept = {k: i.mask.tobytes() for k, i in track_masks(service, frames, track_id).items()}
    with acting("anna"), pytest.raises(StaleEdit, match="Frame 2 was reviewed after the preview"):
        service.propagation.accept(preview)
    assert {k: i.mask.tobytes() for k, i in track_masks(service, frames, track_id).items()} == kept
    with acting("anna"):
        assert not service.ws.can_undo(frames[0])  # no undo entry either


def test_sipmask_and_onnx_models_are_refused_in_one_line(service, tiny_weights, tmp_path):
    """Propagation carries CondInst's per-instance mask filters: a SipMask checkpoint has none, an ONNX
    graph gives detections only; each is one clear line and nothing is pending."""
    from condinst.checkpoint import save_checkpoint
    from condinst.export import export_onnx
    from condinst.predictor import load_model
    from testutils import tiny_sipmask

    view, _, _ = start(service)
    sipmask = save_checkpoint(tmp_path / "sipmask.pth", *tiny_sipmask())
    model, cfg = load_model(tiny_weights)
    graph = export_onnx(model.optimize_for_inference(), cfg, tmp_path / "tiny.onnx")
    for weights, reason in ((sipmask, "SipMask has no per-instance mask filters"), (graph, "gives detections only")):
        service.session.switch(weights)
        with pytest.raises(ServiceError, match=reason) as refused:
            service.propagation.preview(view, 3)
        assert "\n" not in str(refused.value)
