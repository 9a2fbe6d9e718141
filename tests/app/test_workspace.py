"""Tests of app.store.workspace: persistence, masks, undo/redo, uploads, corruption, paths, threads."""
from __future__ import annotations

import sqlite3
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from app.store.db import SCHEMA_VERSION
from app.store.ingest import sanitize_file_name
from app.store.workspace import DB_FILE_NAME, Prediction, Workspace, WorkspaceError, resolve_inside
from condinst.io import atomic_write_bytes
from testutils import scaled

H, W = 48, 64

# pycocotools' decode trips a NumPy 2 DeprecationWarning inside the library; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ------------------------------------------------------------------ fixtures / helpers

@pytest.fixture
def ws_dir(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def ws(ws_dir: Path):
    workspace = Workspace.open(ws_dir)
    workspace.ensure_categories({1: "cell", 7: "nucleus"})  # gaps in ids are allowed
    yield workspace
    workspace.close()


def random_image(seed: int = 0, shape=(H, W, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def random_mask(seed: int) -> np.ndarray:
    """An irregular mask (blobs plus salt noise) so RLE round trips are non-trivial."""
    rng = np.random.default_rng(seed)
    mask = rng.random((H, W)) < 0.05
    y0, x0 = rng.integers(5, 30), rng.integers(5, 40)
    mask[y0:y0 + 12, x0:x0 + 17] = True
    return mask


def state_of(workspace: Workspace) -> list:
    """Everything observable about a workspace, as comparable plain values."""
    state: list = [[(c.id, c.name, c.supercategory) for c in workspace.categories()]]
    for image in workspace.list_images():
        state.append((image, workspace.get_image(image.id).tobytes(),
                      workspace.can_undo(image.id), workspace.can_redo(image.id)))
        for inst in workspace.instances(image.id, include_deleted=True):
            state.append((inst.id, inst.image_id, inst.category_id, inst.score,
                          inst.mask.tobytes(), inst.source, inst.hidden, inst.deleted,
                          inst.user_edited, inst.meta, inst.created_at, inst.updated_at))
    return state


def live_ids(workspace: Workspace, image_id: int) -> list[int]:
    return [inst.id for inst in workspace.instances(image_id)]


# ------------------------------------------------------------------ masks and persistence

def test_masks_round_trip_exactly(ws: Workspace, ws_dir: Path):
    image_id = ws.add_image(random_image(), "a.png")
    masks = [random_mask(seed) for seed in range(5)] + [np.zeros((H, W), bool),
                                                         np.ones((H, W), bool)]
    ids = [ws.add_instance(image_id, 1, mask) for mask in masks]
    stored = {inst.id: inst.mask for inst in ws.instances(image_id)}
    for instance_id, mask in zip(ids, masks):
        assert stored[instance_id].dtype == bool
        np.testing.assert_array_equal(stored[instance_id], mask)
    ws.close()
    with Workspace.open(ws_dir) as reopened:
        for inst, mask in zip(reopened.instances(image_id), masks):
            np.testing.assert_array_equal(inst.mask, mask)


def test_reopen_gives_identical_state(ws: Workspace, ws_dir: Path):
    first = ws.add_image(random_image(1), "first.png")
    second = ws.add_image(random_image(2), "second.png")
    ws.set_predictions(first, [(1, 0.9, random_mask(1), {"fpn_level": 3, "location": [10, 12]}),
                               Prediction(7, np.float32(0.4), random_mask(2))])
    user = ws.add_instance(first, 7, random_mask(3))
    point = ws.add_instance(second, 1, random_mask(4), source="point",
                            meta={"clicks": [[3, 4]]})
    ws.set_hidden(user)
    ws.delete_instance(point)
    ws.set_reviewed(second)
    ws.rename_category(7, "nuclei")
    ws.undo(first)  # leaves a redo entry behind, which must survive too
    before = state_of(ws)
    ws.close()
    with Workspace.open(ws_dir) as reopened:
        assert state_of(reopened) == before
        inst = {i.id: i for i in reopened.instances(first, include_deleted=True)}
        assert inst[1].meta == {"fpn_level": 3, "location": [10, 12]}
        assert inst[1].score == pytest.approx(0.9) and inst[user].score is None


def test_edits_survive_a_crash_without_close(ws_dir: Path):
    """A process that dies right after its edits (no close, no atexit) loses nothing."""
    script = f"""
import os, sys, numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from app.store.workspace import Workspace
ws = Workspace.open({str(ws_dir)!r})
ws.add_category("cell", 1)
image_id = ws.add_image(np.full((8, 8, 3), 9, np.uint8), "crash.png")
mask = np.zeros((8, 8), bool); mask[2:5, 1:7] = True
ws.add_instance(image_id, 1, mask)
ws.set_hidden(1)
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=scaled(60))
    with Workspace.open(ws_dir) as reopened:
        (inst,) = reopened.instances(1)
        assert inst.hidden and inst.mask.sum() == 18
        np.testing.assert_array_equal(reopened.get_image(1), np.full((8, 8, 3), 9, np.uint8))
        reopened.undo(1)
        assert not reopened.get_instance(inst.id).hidden


def test_closed_workspace_refuses_calls(ws: Workspace):
    ws.close()
    ws.close()  # idempotent
    with pytest.raises(WorkspaceError, match="closed"):
        ws.list_images()


def test_database_uses_wal_and_schema_version(ws: Workspace, ws_dir: Path):
    ws.add_image(random_image(), "a.png")
    with sqlite3.connect(ws_dir / DB_FILE_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    # the workspace's own connection commits with synchronous=FULL (2)
    assert ws.db._connection().execute("PRAGMA synchronous").fetchone()[0] == 2


# ------------------------------------------------------------------ instance operations

def test_instance_operations_and_validation(ws: Workspace):
    image_id = ws.add_image(random_image(), "a.png")
    instance_id = ws.add_instance(image_id, 1, random_mask(0))
    ws.set_category(instance_id, 7)
    ws.set_mask(instance_id, random_mask(1))
    ws.set_hidden(instance_id, True)
    inst = ws.get_instance(instance_id)
    assert (inst.category_id, inst.hidden, inst.source, inst.score) == (7, True, "user", None)
    np.testing.assert_array_equal(inst.mask, random_mask(1))

    with pytest.raises(WorkspaceError, match="Category 99 does not exist"):
        ws.set_category(instance_id, 99)
    with pytest.raises(WorkspaceError, match="does not match image"):
        ws.set_mask(instance_id, np.zeros((H + 1, W), bool))
    with pytest.raises(WorkspaceError, match="Each prediction must be"):
        ws.set_predictions(image_id, [(1, 0.5)])
    with pytest.raises(WorkspaceError, match="source"):
        ws.add_instance(image_id, 1, random_mask(0), source="magic")
    with pytest.raises(WorkspaceError, match="positive integer"):
        ws.add_category("bad", 0)
    with pytest.raises(WorkspaceError, match="already exists"):
        ws.add_category("again", 7)
    with pytest.raises(WorkspaceError, match="Image 123 does not exist"):
        ws.instances(123)
    assert ws.add_category("next") == 8

    ws.delete_instance(instance_id)
    assert ws.instances(image_id) == []
    assert [i.id for i in ws.instances(image_id, include_deleted=True)] == [instance_id]
    with pytest.raises(WorkspaceError, match="deleted"):
        ws.set_mask(instance_id, random_mask(2))


def test_instance_ids_are_never_reused(ws: Workspace):
    image_id = ws.add_image(random_image(), "a.png")
    first = ws.add_instance(image_id, 1, random_mask(0))
    ws.delete_instance(first)
    ws.undo(image_id)
    ws.undo(image_id)  # the creation is undone as well
    second = ws.add_instance(image_id, 1, random_mask(1))
    ids = ws.set_predictions(image_id, [(1, 0.5, random_mask(2), None)]).added
    assert second > first and ids[0] > second


def test_set_predictions_keeps_user_work(ws: Workspace):
    image_id = ws.add_image(random_image(), "a.png")
    edited, hidden, recategorised, removed, untouched = ws.set_predictions(
        image_id, [(1, 0.9, random_mask(i), None) for i in range(5)]).added
    assert not ws.can_undo(image_id)  # the first predictions are the starting state, not an undo step
    ws.set_mask(edited, random_mask(10))
    ws.set_category(recategorised, 7)
    ws.set_hidden(hidden)
    ws.delete_instance(removed)
    user = ws.add_instance(image_id, 7, random_mask(11))

    report = ws.set_predictions(image_id, [(7, 0.8, random_mask(12), {"fpn_level": 4}),
                                           (1, 0.9, random_mask(3), None),   # what the user deleted
                                           (1, 0.9, random_mask(4), None)])  # what is already there
    (fresh,) = report.added
    assert report.kept_overlap == 1 and report.replaced == 0
    assert live_ids(ws, image_id) == [edited, hidden, recategorised, untouched, user, fresh]
    assert ws.get_instance(removed).deleted and ws.get_instance(fresh).meta == {"fpn_level": 4}
    assert ws.get_instance(edited).user_edited
    # a re-run is one undo step
    entry = ws.undo(image_id)
    assert entry is not None and entry.label == "re-run model" and set(entry.instance_ids) == {fresh}
    assert live_ids(ws, image_id) == [edited, hidden, recategorised, untouched, user]


def test_rerun_replaces_only_untouched_predictions_and_never_a_reviewed_image(ws: Workspace):
    image_id = ws.add_image(random_image(), "a.png")
    old, kept = ws.set_predictions(image_id, [(1, 0.9, random_mask(1), None), (1, 0.8, random_mask(2), None)]).added
    ws.set_category(kept, 7)
    report = ws.set_predictions(image_id, [(1, 0.7, random_mask(5), None)])
    assert report.replaced == 1 and ws.get_instance(old).deleted and live_ids(ws, image_id)[0] == kept
    ws.set_reviewed(image_id, True, threshold=0.4)
    before = live_ids(ws, image_id)
    report = ws.set_predictions(image_id, [(1, 0.99, random_mask(6), None)])
    assert report.skipped_reviewed and live_ids(ws, image_id) == before
    assert ws.get_image_record(image_id).review_threshold == 0.4


def test_editing_a_reviewed_image_keeps_the_edit_and_asks_for_re_review(ws: Workspace):
    image_id = ws.add_image(random_image(), "a.png")
    (inst,) = ws.set_predictions(image_id, [(1, 0.2, random_mask(1), None)]).added
    ws.set_reviewed(image_id, True, threshold=0.1)
    ws.set_hidden(inst)  # a view flag: still reviewed
    assert ws.get_image_record(image_id).reviewed
    ws.set_mask(inst, random_mask(2))
    record = ws.get_image_record(image_id)
    assert not record.reviewed and record.changed_after_review and record.state == "changed after review"
    assert record.review_threshold == 0.1 and record.threshold(0.9) == 0.1  # what it shows does not jump
    np.testing.assert_array_equal(ws.get_instance(inst).mask, random_mask(2))
    ws.set_reviewed(image_id, True, threshold=0.5)
    record = ws.get_image_record(image_id)
    assert record.reviewed and not record.changed_after_review and record.review_threshold == 0.5


# ------------------------------------------------------------------ undo / redo

def test_undo_redo_sequence(ws: Workspace):
    image_id = ws.add_image(random_image(), "a.png")
    m0, m1 = random_mask(0), random_mask(1)
    instance_id = ws.add_instance(image_id, 1, m0)
    ws.set_mask(instance_id, m1)
    ws.set_category(instance_id, 7)
    ws.set_hidden(instance_id)
    ws.delete_instance(instance_id)

    def current():
        inst = ws.get_instance(instance_id)
        return inst.deleted, inst.hidden, inst.category_id, inst.mask.tobytes()

    states = [(True, False, 1, m0.tobytes()),  # before creation = soft-deleted
              (False, False, 1, m0.tobytes()), (False, False, 1, m1.tobytes()),
              (False, False, 7, m1.tobytes()), (False, True, 7, m1.tobytes()),
              (True, True, 7, m1.tobytes())]
    assert current() == states[5]
    for expected in reversed(states[:5]):
        assert ws.undo(image_id) is not None
        assert current() == expected
    assert ws.undo(image_id) is None and not ws.can_undo(image_id)
    for expected in states[1:]:
        assert ws.redo(image_id) is not None
        assert current() == expected
    assert ws.redo(image_id) is None

    # a new edit after undo clears the redo stack
    ws.undo(image_id)
    ws.undo(image_id)
    assert ws.can_redo(image_id)
    ws.set_category(instance_id, 1)
    assert not ws.can_redo(image_id) and ws.redo(image_id) is None
    assert current() == (False, False, 1, m1.tobytes())
    ws.undo(image_id)
    assert current() == states[3]


def test_undo_is_per_image_and_survives_restart(ws: Workspace, ws_dir: Path):
    a = ws.add_image(random_image(1), "a.png")
    b = ws.add_image(random_image(2), "b.png")
    ia = ws.add_instance(a, 1, random_mask(0))
    ib = ws.add_instance(b, 1, random_mask(1))
    ws.set_mask(ia, random_mask(2))
    ws.close()

    with Workspace.open(ws_dir) as reopened:
        entry = reopened.undo(a)
        assert entry.label == f"edit mask instance {ia}" and entry.instance_ids == (ia,)
        np.testing.assert_array_equal(reopened.get_instance(ia).mask, random_mask(0))
        assert live_ids(reopened, b) == [ib]  # image b untouched
    with Workspace.open(ws_dir) as again:
        assert again.can_redo(a)
        again.redo(a)
        np.testing.assert_array_equal(again.get_instance(ia).mask, random_mask(2))


def test_no_op_edits_push_no_history(ws: Workspace):
    image_id = ws.add_image(random_image(), "a.png")
    instance_id = ws.add_instance(image_id, 1, random_mask(0))
    ws.set_mask(instance_id, random_mask(0))
    ws.set_category(instance_id, 1)
    ws.set_hidden(instance_id, False)
    ws.set_reviewed(image_id)  # not undoable by design
    assert ws.undo(image_id).label == f"add instance {instance_id}"
    assert not ws.can_undo(image_id)
    assert ws.get_image_record(image_id).reviewed


def test_history_limit_drops_oldest(ws_dir: Path):
    with Workspace.open(ws_dir, history_limit=3) as ws:
        ws.add_category("cell", 1)
        image_id = ws.add_image(random_image(), "a.png")
        instance_id = ws.add_instance(image_id, 1, random_mask(0))
        for seed in range(1, 6):
            ws.set_mask(instance_id, random_mask(seed))
        assert sum(ws.undo(image_id) is not None for _ in range(10)) == 3
        np.testing.assert_array_equal(ws.get_instance(instance_id).mask, random_mask(2))


# ------------------------------------------------------------------ images

def test_add_image_from_file_keeps_bytes_and_dedupes(ws: Workspace, tmp_path: Path):
    path = tmp_path / "photo.JPG"
    cv2.imwrite(str(path), random_image(3)[:, :, ::-1])
    image_id = ws.add_image(path)
    record = ws.get_image_record(image_id)
    stored = ws.image_path(image_id)
    assert record.original_name == "photo.JPG" and (record.width, record.height) == (W, H)
    assert stored.parent == ws.images_dir and stored.suffix == ".jpg"
    assert stored.read_bytes() == path.read_bytes()
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(ws.get_image(image_id), expected)

    copy = tmp_path / "copy.jpg"
    copy.write_bytes(path.read_bytes())
    assert ws.add_image(copy) == image_id
    assert len(ws.list_images()) == 1 and len(list(ws.images_dir.iterdir())) == 1


def test_array_image_round_trips(ws: Workspace):
    rgb = random_image(4)
    image_id = ws.add_image(rgb, "from_numpy.png")
    np.testing.assert_array_equal(ws.get_image(image_id), rgb)
    assert ws.image_path(image_id).suffix == ".png"


def test_16bit_grayscale_and_rgba_are_converted(ws: Workspace, tmp_path: Path):
    gradient16 = np.tile(np.linspace(1000, 60000, W).astype(np.uint16), (H, 1))
    cv2.imwrite(str(tmp_path / "deep.png"), gradient16)
    gray8 = random_image(5, shape=(H, W))
    cv2.imwrite(str(tmp_path / "gray.png"), gray8)
    rgba = np.dstack([random_image(6), np.full((H, W), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "alpha.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    rgb16 = (random_image(7).astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "rgb16.tiff"), rgb16[:, :, ::-1])

    deep = ws.get_image(ws.add_image(tmp_path / "deep.png"))
    assert deep.dtype == np.uint8 and deep.shape == (H, W, 3)
    # the library's rule (divide by 257), so the app's model sees what `condinst predict` sees
    from condinst.preprocess import read_image
    np.testing.assert_array_equal(deep, read_image(tmp_path / "deep.png"))
    np.testing.assert_array_equal(deep[0, :, 0], np.round(gradient16[0] / 257.0).astype(np.uint8))
    assert np.array_equal(deep[..., 0], deep[..., 1])
    assert np.all(np.diff(deep[0, :, 0].astype(int)) >= 0)  # monotonic gradient kept

    gray = ws.get_image(ws.add_image(tmp_path / "gray.png"))
    np.testing.assert_array_equal(gray, np.dstack([gray8] * 3))

    alpha_id = ws.add_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(ws.get_image(alpha_id), rgba[:, :, :3])

    tiff_id = ws.add_image(tmp_path / "rgb16.tiff")
    assert ws.image_path(tiff_id).suffix == ".png"  # converted and stored as 8-bit PNG
    np.testing.assert_array_equal(ws.get_image(tiff_id), random_image(7))


def test_exif_rotated_jpeg_is_stored_upright(ws: Workspace, tmp_path: Path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path, exif=exif.tobytes())
    image_id = ws.add_image(path)
    record = ws.get_image_record(image_id)
    assert (record.width, record.height) == (H, W)  # as displayed, not as encoded
    assert ws.image_path(image_id).suffix == ".png"
    assert ws.get_image(image_id).shape == (W, H, 3)


def test_non_images_are_rejected(ws: Workspace, tmp_path: Path):
    text = tmp_path / "notes.png"
    text.write_text("definitely not an image\n" * 20)
    with pytest.raises(WorkspaceError, match="'notes.png' is not a readable image"):
        ws.add_image(text)
    with pytest.raises(WorkspaceError, match="is not a file"):
        ws.add_image(tmp_path / "missing.png")
    with pytest.raises(WorkspaceError, match="is not a file"):
        ws.add_image(tmp_path)
    with pytest.raises(WorkspaceError, match="shape"):
        ws.add_image(np.zeros((4, 4, 4, 4), np.uint8), "x.png")
    assert ws.list_images() == [] and list(ws.images_dir.iterdir()) == []


def test_images_over_pixel_limit_are_rejected(ws_dir: Path, tmp_path: Path):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((90, 120), np.uint8))  # declares 120x90 = 10,800 px
    with Workspace.open(ws_dir, max_pixels=10_000) as ws:
        with pytest.raises(WorkspaceError, match=r"'big.png' is too large: 120x90 = 10,800 pixels"):
            ws.add_image(big)
        with pytest.raises(WorkspaceError, match="too large"):
            ws.add_image(np.zeros((90, 120, 3), np.uint8), "arr.png")
        assert ws.add_image(np.zeros((90, 100, 3), np.uint8), "ok.png") == 1


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (8-bit RGB) but carries no pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_declared_size_is_rejected_before_decoding(ws: Workspace, tmp_path: Path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(12000, 9000))  # 108 MP declared, 60 bytes on disk
    with pytest.raises(WorkspaceError, match="12000x9000 = 108,000,000 pixels"):
        ws.add_image(huge)


# ------------------------------------------------------------------ paths

def test_sanitize_file_name():
    assert sanitize_file_name("../../etc/passwd") == "passwd"
    assert sanitize_file_name("..\\..\\windows\\evil.png") == "evil.png"
    assert sanitize_file_name("..") == "image"
    assert sanitize_file_name(".hidden.png") == "hidden.png"
    assert sanitize_file_name("a/b/c:d*e?.png") == "c_d_e_.png"
    assert len(sanitize_file_name("x" * 500 + ".png")) <= 120
    assert sanitize_file_name("CON.png") == "_CON.png"


def test_path_traversal_is_rejected(ws: Workspace, ws_dir: Path):
    image_id = ws.add_image(random_image(), "../../../../tmp/evil.png")
    record = ws.get_image_record(image_id)
    assert record.original_name == "evil.png"
    assert ws.image_path(image_id).parent == ws.images_dir.resolve()
    with pytest.raises(WorkspaceError, match="outside"):
        resolve_inside(ws_dir, "../outside.png")
    with pytest.raises(WorkspaceError, match="outside"):
        resolve_inside(ws_dir, "/etc/passwd")
    ws.close()

    # a tampered database cannot make the workspace read files outside its folder
    with sqlite3.connect(ws_dir / DB_FILE_NAME) as conn:
        conn.execute("UPDATE images SET file_path = '../../outside.png' WHERE id = ?", (image_id,))
    with Workspace.open(ws_dir) as reopened:
        with pytest.raises(WorkspaceError, match="outside"):
            reopened.get_image(image_id)
        with pytest.raises(WorkspaceError, match="outside"):
            reopened.snapshot()


# ------------------------------------------------------------------ corrupt workspaces

def test_corrupt_database_raises_and_recover_moves_it_aside(ws: Workspace, ws_dir: Path):
    ws.add_image(random_image(), "a.png")
    ws.close()
    db = ws_dir / DB_FILE_NAME
    garbage = b"\x00garbage, not SQLite\xff" * 300
    db.write_bytes(garbage)

    with pytest.raises(WorkspaceError, match=str(db)):
        Workspace.open(ws_dir)
    assert db.read_bytes() == garbage  # a plain open never touches the bad file

    with Workspace.open(ws_dir, recover=True) as recovered:
        assert recovered.recovered_from.name.startswith(f"{DB_FILE_NAME}.corrupt-")
        assert recovered.recovered_from.read_bytes() == garbage
        assert recovered.list_images() == [] and recovered.categories() == []
        recovered.add_category("cell", 1)
    with Workspace.open(ws_dir) as fresh:
        assert [c.name for c in fresh.categories()] == ["cell"]


def test_wrong_schema_raises(ws_dir: Path, tmp_path: Path):
    ws_dir.mkdir()
    with sqlite3.connect(ws_dir / DB_FILE_NAME) as conn:
        conn.execute("CREATE TABLE something_else (x INTEGER)")
    with pytest.raises(WorkspaceError, match="not a CondInst Studio workspace"):
        Workspace.open(ws_dir)

    other = tmp_path / "other"
    Workspace.open(other).close()
    with sqlite3.connect(other / DB_FILE_NAME) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(WorkspaceError, match="schema version"):
        Workspace.open(other)

    third = tmp_path / "third"
    Workspace.open(third).close()
    with sqlite3.connect(third / DB_FILE_NAME) as conn:
        conn.execute("ALTER TABLE instances DROP COLUMN meta")
    with pytest.raises(WorkspaceError, match="lacks \\['meta'\\]"):
        Workspace.open(third)
    with Workspace.open(third, recover=True) as recovered:
        assert recovered.recovered_from.exists()


def test_root_that_is_a_file_is_rejected(tmp_path: Path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(WorkspaceError, match="not a folder"):
        Workspace.open(not_a_dir)


def test_atomic_write_bytes_leaves_no_temp_files(tmp_path: Path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


# ------------------------------------------------------------------ threads

def test_concurrent_edits_from_threads(ws: Workspace):
    image_ids = [ws.add_image(random_image(seed), f"{seed}.png") for seed in range(2)]
    created: list[int] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            image_id = image_ids[seed % 2]
            for step in range(10):
                instance_id = ws.add_instance(image_id, 1, random_mask(seed * 100 + step))
                ws.set_hidden(instance_id, True)
                ws.instances(image_id)
                created.append(instance_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(created)) == 40
    assert sum(len(ws.instances(i)) for i in image_ids) == 40
    assert all(inst.hidden for i in image_ids for inst in ws.instances(i))
