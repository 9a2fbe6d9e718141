"""Videos in the workspace: schema v4 (and the v3 -> v4 migration), a video stored as a sequence of
frames with the tracker's predictions, all or nothing, frame cap, bad videos, the image list."""
from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

import videokit
from app.store.db import SCHEMA_VERSION
from app.errors import ServiceError
from app.video.sequences import representatives
from app.service import Service
from app.store.workspace import Workspace

pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture
def service(video_service):
    return video_service()


def test_video_becomes_one_sequence_of_tracked_frames(service, crossing_mp4):
    path = crossing_mp4
    report = service.images.add_files([path])
    assert "Added video sequence" in report.message and "8 frames" in report.message
    (sequence,) = service.sequences.all()
    assert (sequence.num_frames, sequence.height, sequence.width, sequence.name) == (8, 360, 480, "crossing.mp4")
    assert sequence.fps == pytest.approx(10.0)
    frames = service.sequences.frame_ids(sequence.id)
    assert len(frames) == 8 and report.image_ids == [frames[0]]
    records = [service.ws.get_image_record(i) for i in frames]
    assert [r.frame_index for r in records] == list(range(8))
    assert all(r.sequence_id == sequence.id and r.segmented_by == service.session.key for r in records)
    # the stored frame is the decoded video frame, losslessly
    from condinst.video.reader import open_video

    first = next(iter(open_video(path).frames()))
    assert np.array_equal(service.ws.get_image(frames[0]), first)
    # the tracker's ids: every stored instance has one (what the tracker left out is not stored), none
    # twice on a frame, some span several frames
    stored = [inst for i in frames for inst in service.ws.instances(i)]
    tracked = [inst for inst in stored if inst.track_id is not None]
    assert tracked, "the tiny model's detections should be tracked"
    assert len(tracked) == len(stored), "untracked detections were stored"
    per_frame = {}
    for inst in tracked:
        per_frame.setdefault((inst.image_id, inst.track_id), []).append(inst.id)
    assert all(len(v) == 1 for v in per_frame.values())
    summaries = service.tracks.tracks(sequence.id)
    assert max(len(t.frames) for t in summaries) >= 4
    # the same video again is recognised
    again = service.images.add_files([path])
    assert "already in the workspace" in again.message and len(service.sequences.all()) == 1


def test_image_list_shows_a_sequence_as_one_item(service, crossing_mp4, image_paths):
    service.images.add_files([image_paths[0]])
    service.images.add_files([crossing_mp4])
    service.images.add_files([image_paths[1]])
    images = service.ws.list_images()
    assert len(images) == 10
    items = representatives(images)
    assert len(items) == 3 and items[1].frame_index == 0
    fifth = service.sequences.frame_ids(1)[4]
    assert [i.id for i in representatives(images, current=fifth)][1] == fifth
    labels = [label for label, _ in service.screens.image_choices()]
    assert len(labels) == 3 and "crossing.mp4" in labels[1] and "8 frames" in labels[1]
    # next / previous step over the sequence as one item
    from app.view import View

    view = View(image_id=fifth)
    after, _ = service.actions.step(view, +1)
    assert after.image_id == images[-1].id
    before, _ = service.actions.step(View(image_id=images[-1].id), -1)
    assert service.ws.get_image_record(before.image_id).sequence_id == 1


def test_bad_videos_are_one_line_and_store_nothing(service, crossing_mp4, tmp_path):
    truncated = tmp_path / "cut.mp4"
    data = crossing_mp4.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.webm"
    text.write_text("not a video")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    for bad in (truncated, text, empty):
        with pytest.raises(ServiceError) as err:
            service.images.add_files([bad])
        message = str(err.value)
        assert "\n" not in message and bad.name in message, message
    assert service.ws.list_images() == [] and service.sequences.all() == []
    assert list(service.ws.images_dir.iterdir()) == [] and list(service.ws.previews_dir.iterdir()) == []


def test_frame_cap_refuses_long_videos(tiny_weights, tmp_path, crossing_mp4):
    service = Service.create(tmp_path / "ws", tiny_weights, max_video_frames=5)
    try:
        with pytest.raises(ServiceError, match=r"8 frames.*at most 5 frames \(--max-video-frames\)"):
            service.sequences.add_video(crossing_mp4)
        assert service.ws.list_images() == [] and list(service.ws.images_dir.iterdir()) == []
    finally:
        service.close()


def test_killed_upload_leaves_nothing_half(service, crossing_mp4, monkeypatch):
    """A crash before the one transaction: no sequence, no frame rows, no frame files (they were decoded into
    the upload's staging folder, removed with it; a killed upload's is removed by the next start's sweep)."""
    library = service.sequences

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill between the last frame and the rows

    monkeypatch.setattr(library, "_store", crash)
    with pytest.raises(KeyboardInterrupt):
        library.add_video(crossing_mp4)
    assert service.ws.list_images() == [] and library.all() == []
    assert list(service.ws.images_dir.iterdir()) == [] and list(service.ws.previews_dir.iterdir()) == []
    assert service.ws.sweep(min_age=0.0) == 0
    monkeypatch.undo()
    assert library.add_video(crossing_mp4).frames == 8  # and the upload works afterwards


def test_v3_workspace_migrates_in_place(tmp_path):
    """A v3 workspace (as the previous schema wrote it) opens as v4: its images are still images."""
    root = tmp_path / "ws"
    with Workspace(root) as ws:
        ws.add_category("thing", 1)
        image_id = ws.add_image(np.full((20, 30, 3), 90, np.uint8), "a.png")
        mask = np.zeros((20, 30), bool)
        mask[2:8, 3:9] = True
        instance_id = ws.add_instance(image_id, 1, mask)
    conn = sqlite3.connect(root / "workspace.sqlite")  # back to v3: drop what v4 added
    conn.executescript("DROP INDEX images_by_frame; DROP INDEX instances_by_track;"
                       " ALTER TABLE images DROP COLUMN sequence_id; ALTER TABLE images DROP COLUMN frame_index;"
                       " ALTER TABLE instances DROP COLUMN track_id; DROP TABLE sequences;"
                       " UPDATE schema_version SET version = 3;"
                       " UPDATE history_changes SET before = json_remove(before, '$.track_id'),"
                       " after = json_remove(after, '$.track_id');")
    conn.close()
    with Workspace(root) as ws:
        assert ws.db.migrated_from == 3
        record = ws.get_image_record(image_id)
        assert (record.sequence_id, record.frame_index) == (None, None)
        assert ws.get_instance(instance_id).track_id is None
        assert ws.undo(image_id) is not None  # an undo entry written by v3 still applies
        assert ws.instances(image_id) == []
        with ws.db.read() as c:
            assert c.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 4
            assert c.execute("SELECT COUNT(*) FROM sequences").fetchone()[0] == 0


def test_sweep_removes_an_unlisted_stray_only_when_old_and_younger_than_the_workspace(service):
    """A file no writer listed (an older version's crash) is a stray only when it is older than the sweep's
    min_age (an older version's upload may be in flight) and younger than the workspace's first image."""
    import os

    ws = service.ws
    ws.add_image(np.full((20, 30, 3), 5, np.uint8), "a.png")
    with ws.db.write() as conn:
        conn.execute("UPDATE images SET created_at = '2000-01-01T00:00:00+00:00'")
    stray = ws.images_dir / "0123456789abcdef-00000.png"
    stray.write_bytes(b"x")
    assert ws.sweep() == 0 and stray.exists()
    old = time.time() - 3600
    os.utime(stray, (old, old))
    assert ws.sweep() == 1 and not stray.exists()
    with ws.db.write() as conn:  # a file older than the first image predates the database: a photo, kept
        conn.execute("UPDATE images SET created_at = '2100-01-01T00:00:00+00:00'")
    stray.write_bytes(b"x")
    os.utime(stray, (old, old))
    assert ws.sweep() == 0 and stray.exists()


def test_salvage_keeps_sequences_frames_and_tracks(service, crossing_mp4, tmp_path):
    """Recovery copies sequences before images: a frame keeps its sequence, an instance its track."""
    from app.store.db import Database, salvage

    service.images.add_files([crossing_mp4])
    tracked = {i.id: i.track_id for f in service.sequences.frame_ids(1) for i in service.ws.instances(f)}
    service.close()
    target = Database(tmp_path / "new.sqlite")
    recovery = salvage(service.ws.db_path, target)
    assert recovery.kept["sequences"] == 1 and recovery.kept["images"] == 8 and sum(recovery.lost.values()) == 0
    with target.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM images WHERE sequence_id = 1").fetchone()[0] == 8
        assert dict(conn.execute("SELECT id, track_id FROM instances").fetchall()) == tracked
    target.close()
