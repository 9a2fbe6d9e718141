"""Track operations on a stored video: class for all frames, split, merge (refused on a shared frame),
assigning a drawn instance; each one undo step of its author, stale edits refused, reviews marked."""
from __future__ import annotations

import numpy as np
import pytest

import videokit
from app.store.history import StaleEdit, acting
from app.errors import ServiceError

pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture
def service(video_service, crossing_mp4):
    return video_service(crossing_mp4)


def members(service, track_id):
    """{frame index: (instance id, category id)} of a track's live instances."""
    out = {}
    for image_id in service.sequences.frame_ids(1):
        for inst in service.ws.instances(image_id):
            if inst.track_id == track_id:
                assert service.ws.get_image_record(image_id).frame_index not in out
                out[service.ws.get_image_record(image_id).frame_index] = (inst.id, inst.category_id)
    return out


def longest(service):
    return max(service.tracks.tracks(1), key=lambda t: len(t.frames))


def test_class_of_a_track_is_set_on_every_frame_as_one_undo_step(service):
    track = longest(service)
    frames = service.sequences.frame_ids(1)
    anchor = frames[track.frames[0]]
    before = members(service, track.id)
    target = next(c.id for c in service.ws.categories() if c.id != track.category_id)
    with acting("anna"):
        message = service.tracks.set_class(anchor, track.id, target)
    assert "class set on" in message
    after = members(service, track.id)
    assert after.keys() == before.keys() and {c for _, c in after.values()} == {target}
    assert all(service.ws.get_instance(i).user_edited for i, _ in after.values())
    assert service.tracks.tracks(1)[[t.id for t in service.tracks.tracks(1)].index(track.id)].category_id == target
    with acting("bob"):  # someone else's undo does not take anna's step back
        assert service.ws.undo(anchor) is None
    with acting("anna"):
        entry = service.ws.undo(anchor)
    assert entry is not None and entry.blocked is None and len(entry.instance_ids) == len(
        [1 for _, c in before.values() if c != target])
    assert members(service, track.id) == before
    with acting("anna"):
        service.ws.redo(anchor)
    assert {c for _, c in members(service, track.id).values()} == {target}


def test_split_then_merge_back_and_merge_refused_on_a_shared_frame(service):
    track = longest(service)
    frames = service.sequences.frame_ids(1)
    anchor = frames[track.frames[0]]
    cut = track.frames[len(track.frames) // 2]
    before = members(service, track.id)
    # another track on a frame of this one: merging is refused, naming the (first) shared frame
    other = next(t for t in service.tracks.tracks(1) if t.id != track.id and set(t.frames) & set(track.frames))
    shared = min(set(other.frames) & set(track.frames))
    with pytest.raises(ServiceError, match=rf"both have an instance on frame {shared}\b"):
        service.tracks.merge(anchor, track.id, other.id)
    assert members(service, track.id) == before  # nothing changed
    new_id = max(t.id for t in service.tracks.tracks(1)) + 1
    with acting("anna"):
        message = service.tracks.split(anchor, track.id, cut)
    assert f"track {new_id}" in message
    assert sorted(members(service, track.id)) == [f for f in track.frames if f < cut]
    assert sorted(members(service, new_id)) == [f for f in track.frames if f >= cut]
    with pytest.raises(ServiceError, match="split it at a frame after its first"):
        service.tracks.split(anchor, track.id, track.frames[0])
    with acting("anna"):
        service.tracks.merge(anchor, track.id, new_id)
    assert {f: i for f, (i, _) in members(service, track.id).items()} == {f: i for f, (i, _) in before.items()}
    assert members(service, new_id) == {}
    with acting("anna"):  # two steps back: merge, then split
        service.ws.undo(anchor)
        assert sorted(members(service, new_id)) == [f for f in track.frames if f >= cut]
        service.ws.undo(anchor)
    assert {f: i for f, (i, _) in members(service, track.id).items()} == {f: i for f, (i, _) in before.items()}


def test_a_track_operation_over_someone_elses_newer_edit_is_refused_whole(service):
    track = longest(service)
    frames = service.sequences.frame_ids(1)
    anchor = frames[track.frames[0]]
    seen = {}
    with acting("anna", seen=seen):
        for image_id in frames:  # anna's page showed every frame
            service.ws.instances(image_id)
        seen = {i.id: i.revision for f in frames for i in service.ws.instances(f)}
    last_instance = members(service, track.id)[track.frames[-1]][0]
    with acting("bob"):
        service.ws.set_hidden(last_instance, True)
    before = members(service, track.id)
    target = next(c.id for c in service.ws.categories() if c.id != track.category_id)
    with acting("anna", seen=seen), pytest.raises(StaleEdit, match=rf"#{last_instance} was changed by bob"):
        service.tracks.set_class(anchor, track.id, target)
    assert members(service, track.id) == before


def test_mask_edit_keeps_the_track_and_a_drawn_instance_joins_one(service):
    track = longest(service)
    frames = service.sequences.frame_ids(1)
    frame_index = track.frames[0]
    image_id = frames[frame_index]
    instance_id = members(service, track.id)[frame_index][0]
    mask = service.ws.get_instance(instance_id).mask.copy()
    mask[:5, :5] = True
    service.ws.set_mask(instance_id, mask)
    assert service.ws.get_instance(instance_id).track_id == track.id
    drawn = np.zeros(mask.shape, bool)
    drawn[300:340, 10:60] = True
    new_id = service.ws.add_instance(image_id, 1, drawn)
    assert service.ws.get_instance(new_id).track_id is None
    with pytest.raises(ServiceError, match=rf"already has instance #{instance_id} on frame {frame_index}"):
        service.tracks.assign(new_id, track.id)
    message = service.tracks.assign(new_id, None)
    fresh = service.ws.get_instance(new_id).track_id
    assert fresh == max(t.id for t in service.tracks.tracks(1)) and f"track {fresh}" in message
    service.ws.undo(image_id)
    assert service.ws.get_instance(new_id).track_id is None


def test_track_operations_mark_reviewed_frames_and_refuse_still_images(service, image_paths):
    track = longest(service)
    frames = service.sequences.frame_ids(1)
    reviewed = frames[track.frames[-1]]
    service.ws.set_reviewed(reviewed, True, 0.3)
    target = next(c.id for c in service.ws.categories() if c.id != track.category_id)
    service.tracks.set_class(frames[track.frames[0]], track.id, target)
    record = service.ws.get_image_record(reviewed)
    assert not record.reviewed and record.changed_after_review
    still = service.images.add_files([image_paths[0]]).image_ids[0]
    with pytest.raises(ServiceError, match="not a video frame"):
        service.tracks.split(still, track.id, 1)
