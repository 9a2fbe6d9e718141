"""Hostile and unlucky conditions for the workspace's files: recovery, the start-up sweep, killed writers,
a live writer beside a starting app, the users file's permissions and stopping the app with a signal.

Issue 20, observations 3, 6 (clean-up), 15, 16 and 17. Every writer here is a real subprocess; the
tests wait for what it prints (an event), never for a fixed time.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.errors import WorkspaceError
from app.store.process_lock import WorkspaceLock
from app.service import Service
from app.store.workspace import DB_FILE_NAME, Workspace

REPO = Path(__file__).resolve().parents[2]
FRUITS = REPO.parent / "shared" / "datasets" / "fruits_nuts" / "data"
HOUR = 3600.0
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _app_fixtures():
    """tests/app/conftest.py as a module, for its fixtures: the tiny blob-segmenting checkpoint, the test video."""
    spec = importlib.util.spec_from_file_location("app_test_fixtures", REPO / "tests" / "app" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _app_fixtures()
tiny_weights, crossing_mp4 = _fixtures.tiny_weights, _fixtures.crossing_mp4


@pytest.fixture(scope="module")
def coco_zip(tmp_path_factory) -> Path:
    """The first 4 fruits_nuts photos and their annotations as a COCO zip (what an export holds)."""
    if not FRUITS.is_dir():
        pytest.skip("shared fruits_nuts dataset not found")
    data = json.loads((FRUITS / "trainval.json").read_text())
    images = data["images"][:4]
    keep = {img["id"] for img in images}
    dataset = {"images": images, "categories": data["categories"],
               "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    path = tmp_path_factory.mktemp("zip") / "fruits.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(dataset))
        for img in images:
            archive.write(FRUITS / "images" / img["file_name"], f"images/{img['file_name']}")
    return path


# ---- helpers ----------------------------------------------------------------------------------------------

def stored_workspace(root: Path, count: int = 6) -> list[Path]:
    """A workspace holding `count` images stored an hour ago; returns their files."""
    rng = np.random.default_rng(0)
    with Workspace.open(root) as ws:
        ids = [ws.add_image(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), f"photo{k}.png") for k in range(count)]
        files = [ws.image_path(i) for i in ids]
    age(root)
    return files


def age(root: Path, seconds: float = HOUR) -> None:
    """Every file under `root` written `seconds` ago (a workspace in use for a while, a long import)."""
    then = time.time() - seconds
    for path in root.rglob("*"):
        os.utime(path, (then, then))


def damage(db: Path, how: str) -> None:
    for side in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        side.unlink(missing_ok=True)
    data = db.read_bytes()
    if how == "truncated":
        db.write_bytes(data[:1024])
    elif how == "zeroed_header":
        db.write_bytes(bytes(100) + data[100:])
    elif how == "text":
        db.write_text("these are not the annotations you are looking for\n" * 50)
    else:
        db.write_bytes(b"")


def leftovers(root: Path) -> list[str]:
    """Every file or folder of `root` that is not the workspace's own (database, lock, empty folders)."""
    own = {DB_FILE_NAME, f"{DB_FILE_NAME}-wal", f"{DB_FILE_NAME}-shm", "app.lock"}
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] in ("exports", "retrain") or str(relative) in own:
            continue
        if path.is_file() or (path.is_dir() and not any(path.iterdir())
                              and relative.parts[0] not in ("images", "previews", "staging")):
            found.append(str(relative))
    return sorted(found)


class Writer:
    """A subprocess that writes into the workspace and stops at a point we choose: it prints `ready_line`
    there and waits for a line on stdin (continue) or for a kill."""

    def __init__(self, script: str, ready_line: str):
        self.process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        self.watchdog = threading.Timer(600, self.process.kill)  # a hung writer fails the test, never hangs it
        self.watchdog.start()
        while True:
            line = self.process.stdout.readline()
            assert line, f"the writer ended before {ready_line!r}: {self.process.stderr.read()[-3000:]}"
            if line.strip() == ready_line:
                break

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)
        self.watchdog.cancel()

    def resume(self) -> str:
        out, err = self.process.communicate("go\n", timeout=600)
        self.watchdog.cancel()
        assert self.process.returncode == 0, err[-3000:]
        return out


def video_writer(root: Path, weights: Path, video: Path) -> Writer:
    """A video upload stopped after its third frame was decoded, segmented and written."""
    return Writer(f"""
        import sys
        from app.service import Service
        service = Service.create({str(root)!r}, {str(weights)!r})
        def progress(done, total):
            if done == 2:
                print("mid-ingest", flush=True)
                sys.stdin.readline()
        report = service.sequences.add_video({str(video)!r}, progress)
        print("stored", report.sequence_id, flush=True)
        service.close()
    """, "mid-ingest")


def import_writer(root: Path, archive: Path) -> Writer:
    """`python -m app import --ann fruits.zip` stopped inside its transaction, two images' files written."""
    return Writer(f"""
        import sys
        from app.store import storage
        from app.commands import main
        real, calls = storage.insert_instances, []
        def insert_instances(*args, **kwargs):  # one call per image, after its file is written
            calls.append(1)
            if len(calls) == 2:
                print("mid-import", flush=True)
                sys.stdin.readline()
            return real(*args, **kwargs)
        storage.insert_instances = insert_instances
        sys.exit(main(["import", "--workspace", {str(root)!r}, "--ann", {str(archive)!r}]))
    """, "mid-import")


def start(root: Path, weights: Path, **kwargs) -> Service:
    """What `python -m app` does at start (model, workspace, recovery, sweep), closed again by the caller."""
    return Service.create(root, weights, **kwargs)


# ---- observation 3: recovery never deletes photos -----------------------------------------------------

@pytest.mark.parametrize("how", ["truncated", "zeroed_header", "text", "empty"])
def test_a_recovery_that_salvages_nothing_keeps_every_photo(tmp_path, tiny_weights, how):
    """Observed: after each of these, recovery + start removed 18 of 18 stored images."""
    root = tmp_path / "ws"
    files = stored_workspace(root)
    damage(root / DB_FILE_NAME, how)

    with pytest.raises(WorkspaceError, match="--recover"):  # never silently a new workspace, not even 0 bytes
        Workspace.open(root)
    service = start(root, tiny_weights)
    assert service.workspace is None and "--recover" in service.workspace_error
    service.close()
    assert all(f.is_file() for f in files)

    service = start(root, tiny_weights, recover=True)
    try:
        assert all(f.is_file() for f in files), "recovery or the sweep deleted photos"
        assert service.ws.list_images() == []
        message = service.ws.recovery.message
        assert f"all {len(files)} image files" in message and "kept" in message, message
        assert "backup" in message and service.ws.recovery.moved_to.name in message, message
        assert message in service.notices and not any("Removed" in n for n in service.notices), service.notices
    finally:
        service.close()
    age(root)
    service = start(root, tiny_weights)  # the next start, long after: still nothing removed
    service.close()
    assert all(f.is_file() for f in files), "a later start's sweep deleted photos"


def test_the_sweep_keeps_files_a_moved_aside_database_refers_to(tmp_path):
    root = tmp_path / "ws"
    files = stored_workspace(root, count=3)
    conn = sqlite3.connect(root / DB_FILE_NAME)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    aside = root / f"{DB_FILE_NAME}.corrupt-20240101T000000000000Z"
    aside.write_bytes((root / DB_FILE_NAME).read_bytes())
    conn = sqlite3.connect(root / DB_FILE_NAME)
    with conn:
        conn.execute("UPDATE images SET created_at = '2000-01-01T00:00:00+00:00'")  # in use long before the files
        conn.execute("DELETE FROM images WHERE file_path = ?", (f"images/{files[0].name}",))
    conn.close()
    with Workspace.open(root) as ws:
        assert ws.sweep() == 0 and files[0].is_file()  # only the moved-aside database refers to it
    aside.unlink()
    with Workspace.open(root) as ws:  # the same file with nothing referring to it is a stray of a crash
        assert ws.sweep() == 1 and not files[0].exists() and all(f.is_file() for f in files[1:])


def test_an_unreadable_moved_aside_database_stops_the_sweep_from_deleting_images(tmp_path):
    root = tmp_path / "ws"
    files = stored_workspace(root, count=2)
    (root / f"{DB_FILE_NAME}.corrupt-20240101T000000000000Z").write_bytes(b"garbage" * 100)
    conn = sqlite3.connect(root / DB_FILE_NAME)
    with conn:
        conn.execute("UPDATE images SET created_at = '2000-01-01T00:00:00+00:00'")
        conn.execute("DELETE FROM images WHERE file_path = ?", (f"images/{files[0].name}",))
    conn.close()
    with Workspace.open(root) as ws:
        assert ws.sweep() == 0 and files[0].is_file()


def test_a_missing_database_beside_stored_photos_never_lets_a_later_sweep_remove_them(tmp_path):
    root = tmp_path / "ws"
    files = stored_workspace(root, count=2)
    for name in (DB_FILE_NAME, f"{DB_FILE_NAME}-wal", f"{DB_FILE_NAME}-shm"):
        (root / name).unlink(missing_ok=True)
    for _ in range(2):
        with Workspace.open(root) as ws:
            ws.add_image(np.full((20, 30, 3), 7, np.uint8), "new.png")
            ws.sweep()
        age(root)
    assert all(f.is_file() for f in files)


# ---- observations 6 and 15: a killed writer leaves nothing after the next start ------------------------

@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_kill_mid_video_ingest_leaves_nothing_after_the_next_start(tmp_path, tiny_weights, crossing_mp4):
    """Observed: 29 frame files stayed until a start at least 300 s later."""
    root = tmp_path / "ws"
    writer = video_writer(root, tiny_weights, crossing_mp4)
    writer.kill()
    assert leftovers(root), "the kill should leave the frames written so far"
    service = start(root, tiny_weights)
    service.close()
    assert leftovers(root) == []


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_kill_mid_import_leaves_nothing_after_the_next_start(tmp_path, tiny_weights, coco_zip):
    """Observed: a killed `python -m app import` left a .import-* scratch folder and a stray image."""
    root = tmp_path / "ws"
    writer = import_writer(root, coco_zip)
    writer.kill()
    assert leftovers(root), "the kill should leave the extracted zip and the image files written so far"
    service = start(root, tiny_weights)
    try:
        assert service.ws.list_images() == []
    finally:
        service.close()
    assert leftovers(root) == []


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_a_live_video_ingest_is_never_disturbed_by_a_starting_app(tmp_path, tiny_weights, crossing_mp4):
    root = tmp_path / "ws"
    writer = video_writer(root, tiny_weights, crossing_mp4)
    age(root)  # a long upload: its files look old to an age rule
    start(root, tiny_weights).close()
    out = writer.resume()
    assert out.split()[-2:] == ["stored", "1"], out
    with Workspace.open(root) as ws:
        frames = ws.list_images()
        assert len(frames) == 8
        for record in frames:
            ws.get_image(record.id)  # every frame's file is there and whole
    assert leftovers(root) == sorted(f"images/{Path(r.file_path).name}" for r in frames)


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_a_live_cli_import_is_never_disturbed_by_a_starting_app(tmp_path, tiny_weights, coco_zip):
    root = tmp_path / "ws"
    start(root, tiny_weights).close()  # a workspace the app has used (its classes stored)
    writer = import_writer(root, coco_zip)
    age(root)
    service = start(root, tiny_weights)  # starts beside the import's open transaction
    try:
        assert service.workspace is not None, service.workspace_error
    finally:
        service.close()
    assert "imported 4 images" in writer.resume()
    with Workspace.open(root) as ws:
        images = ws.list_images()
        assert len(images) == 4
        for record in images:
            ws.get_image(record.id)
    assert not any(name.startswith((".import-", "staging/")) for name in leftovers(root)), leftovers(root)


def test_a_failed_video_ingest_removes_its_frames_at_once(tmp_path, tiny_weights, crossing_mp4, monkeypatch):
    root = tmp_path / "ws"
    service = start(root, tiny_weights)
    try:
        def crash(*args, **kwargs):
            raise KeyboardInterrupt  # between the last frame and the rows

        monkeypatch.setattr(service.sequences, "_store", crash)
        with pytest.raises(KeyboardInterrupt):
            service.sequences.add_video(crossing_mp4)
        assert [n for n in leftovers(root) if not n.startswith("staging/")] == []
        assert list((root / "staging").rglob("*.png")) == []
    finally:
        service.close()
    assert leftovers(root) == []  # the app's own staging goes with it


# ---- observation 16: a users file others can read -------------------------------------------------------

def test_a_users_file_others_can_read_is_warned_about_and_one_they_can_write_is_refused(tmp_path, capsys,
                                                                                      tiny_weights):
    from app.__main__ import build_parser, check_arguments
    from app.team.accounts import add_user

    users = tmp_path / "team.users"
    add_user(users, "anna", "admin", "correct horse battery")
    args = build_parser().parse_args(["--users", str(users), "--weights", str(tiny_weights),
                                      "--workspace", str(tmp_path / "ws")])
    check_arguments(args)
    assert capsys.readouterr().err == ""
    users.chmod(0o644)
    check_arguments(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "readable by other users" in err[0], err
    assert f"chmod 600 {users}" in err[0]
    users.chmod(0o666)
    with pytest.raises(SystemExit, match="writable by other users"):
        check_arguments(args)


# ---- observation 17: SIGTERM / SIGINT shut the app down cleanly ----------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_the_app_down_cleanly(tmp_path, tiny_weights, sig):
    """Observed: SIGTERM left the workspace lock behind ("did not close cleanly" on the next start)."""
    root, port = tmp_path / "ws", free_port()
    process = subprocess.Popen([sys.executable, "-m", "app", "--weights", str(tiny_weights), "--workspace", str(root),
                                "--port", str(port)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 300
        while True:  # until the page is served
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the app did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)  # polling interval, not a wait for an outcome
        assert WorkspaceLock(root).holder().get("pid") == str(process.pid)
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert WorkspaceLock(root).holder() == {}  # released: the file no longer names a holder
    lock = WorkspaceLock(root)
    assert lock.acquire() is None  # no "did not close cleanly" note
    lock.release()
