"""Team annotation without a browser: accounts, attribution, per-person undo, no lost update,
review states, presence, the v2 -> v3 migration and the one-app-per-workspace lock.

People act through `app.store.history.acting` exactly as the page's events do (`app.web.team_page.context`).
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.team.accounts import (Account, Accounts, AccountsError, LoginGuard, add_user, hash_password, read_users,
                          verify_password)
from app.store.history import StaleEdit, acting
from app.store.db import SCHEMA_VERSION
from app.errors import ServiceError
from app.team.presence import Presence
from app.store.process_lock import LockError, WorkspaceLock
from app.service import Service, View
from app.store.workspace import DB_FILE_NAME, Workspace
from testutils import scaled

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(tmp_path, tiny_weights):
    """A service whose team is anna and bob (annotators) and rita (reviewer)."""
    svc = Service.create(tmp_path / "ws", tiny_weights)
    svc.accounts = Accounts({name: Account(name, role, "") for name, role in
                             (("anna", "annotator"), ("bob", "annotator"), ("rita", "reviewer"))})
    yield svc
    svc.close()


@pytest.fixture
def image(service):
    """One 60x80 image with one user instance (made by anna) and the view both people open."""
    ws = service.ws
    ws.ensure_categories({1: "date", 2: "fig"})
    image_id = ws.add_image(np.full((60, 80, 3), 90, np.uint8), "a.png", predictions=[])
    with acting("anna"):
        instance_id = ws.add_instance(image_id, 1, box_mask(10, 10, 30, 30))
    return image_id, instance_id


def box_mask(x0, y0, x1, y1, shape=(60, 80)):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _observe(service, user, view):
    """What the person's page holds after showing the view: the revisions it shows (app.web.team_page.observe)."""
    seen = {inst.id: inst.revision for inst in service.ws.instances(view.image_id)}
    service.presence.seen(user, view.image_id)
    return replace(view, seen=seen)


def act(service, user, view, fn, *args):
    """Run one action as `user` with the page's context (what they saw, the presence claim)."""
    with acting(user, seen=view.seen, claim=lambda image_id: service.presence.claim(user, image_id)):
        return fn(view, *args)


# ---- accounts --------------------------------------------------------------------------------------

def test_password_hashes_are_salted_scrypt_with_their_parameters():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", first) and not verify_password("correct hose", first)


def test_users_file_is_written_by_the_command_and_checked_line_by_line(tmp_path):
    users = tmp_path / "team.users"
    assert "added anna (annotator)" in add_user(users, "anna", "annotator", "anna-password")
    add_user(users, "rita", "reviewer", "rita-password")
    with pytest.raises(AccountsError, match="already exists"):
        add_user(users, "anna", "admin", "another-password")
    add_user(users, "anna", "admin", "another-password", replace=True)
    accounts = read_users(users)
    assert {a.name: a.role for a in accounts.values()} == {"anna": "admin", "rita": "reviewer"}
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    for text, message in (("anna:annotator\n", "line 1: expected name:role:hash"),
                          ("anna:boss:" + accounts["anna"].password_hash, "line 1: role 'boss'"),
                          ("# team\nanna:admin:plaintext\n", "line 2: the password hash is not"),
                          ("", "no accounts")):
        bad = tmp_path / "bad.users"
        bad.write_text(text)
        with pytest.raises(AccountsError, match=message):
            read_users(bad)


def test_failed_logins_are_locked_out_per_user_and_per_address():
    now = [0.0]
    accounts = Accounts.single("anna", "anna-password")
    accounts.guard = LoginGuard(clock=lambda: now[0])
    assert [accounts.check("anna", "wrong", "10.0.0.1") for _ in range(3)] == [False] * 3
    assert accounts.guard.locked_for("user:anna") == 0  # three free tries
    assert not accounts.check("anna", "wrong", "10.0.0.1")  # the 4th locks the name for 1 s
    assert not accounts.check("anna", "anna-password", "10.0.0.2")  # refused while locked, even right
    now[0] += 1.01
    assert not accounts.check("anna", "wrong", "10.0.0.1")
    assert accounts.guard.locked_for("user:anna") == pytest.approx(2.0)  # doubles
    now[0] += 2.01
    assert accounts.check("anna", "anna-password", "10.0.0.2")  # then works and resets
    assert accounts.guard.locked_for("user:anna") == 0
    for k in range(11):  # one address guessing many names is locked too
        accounts.check(f"nobody{k}", "guess", "10.0.0.9")
    assert accounts.guard.locked_for("addr:10.0.0.9") > 0 and accounts.guard.locked_for("addr:10.0.0.2") == 0


def run_app(*args, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True,
                          input=stdin, timeout=scaled(120))


@pytest.mark.slow
def test_cli_users_add_reads_the_password_from_stdin_and_a_bad_users_file_is_one_error_line(tmp_path,
                                                                                             tiny_weights):
    users = tmp_path / "team.users"
    result = run_app("users", "add", "anna", "--role", "reviewer", "--users", str(users), stdin="anna-password\n")
    assert result.returncode == 0 and "added anna (reviewer)" in result.stdout
    assert verify_password("anna-password", read_users(users)["anna"].password_hash)
    result = run_app("users", "add", "bob", "--role", "annotator", "--users", str(users), stdin="short\n")
    assert result.returncode == 2 and result.stderr.strip() == "error: the password must have at least 8 characters"
    bad = tmp_path / "bad.users"
    bad.write_text("anna:reviewer:nothash\n")
    result = run_app("--users", str(bad), "--weights", str(tiny_weights), "--workspace", str(tmp_path / "ws"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: --users")
    assert "line 1" in lines[0] and not (tmp_path / "ws" / DB_FILE_NAME).exists()  # before the model / workspace


# ---- attribution, per-person undo, no lost update ---------------------------------------------------

def test_every_edit_records_who_and_when(service, image):
    image_id, instance_id = image
    inst = service.ws.get_instance(instance_id)
    assert inst.created_by == inst.updated_by == "anna" and inst.revision == 0
    with acting("bob"):
        service.ws.set_category(instance_id, 2)
    inst = service.ws.get_instance(instance_id)
    assert (inst.created_by, inst.updated_by, inst.revision) == ("anna", "bob", 1)
    with service.ws.db.read() as conn:
        users = conn.execute("SELECT user, label FROM history WHERE image_id = ? ORDER BY id", (image_id,)).fetchall()
    assert users == [("anna", f"add instance {instance_id}"), ("bob", f"change category instance {instance_id}")]


def test_undo_is_per_person_and_never_undoes_someone_elses_edit(service, image):
    image_id, first = image
    ws = service.ws
    with acting("bob"):
        second = ws.add_instance(image_id, 2, box_mask(40, 40, 60, 55))
    with acting("anna"):  # anna's undo removes anna's instance, not bob's newer one
        assert ws.undo(image_id).label == f"add instance {first}"
    assert ws.get_instance(first).deleted and not ws.get_instance(second).deleted
    with acting("bob"):
        assert ws.can_undo(image_id) and ws.undo(image_id).label == f"add instance {second}"
        assert ws.redo(image_id).label == f"add instance {second}"
    with acting("anna"):
        ws.redo(image_id)
    with acting("bob"):  # bob changes anna's instance; anna's earlier step on it can no longer be undone
        ws.set_category(first, 2)
    with acting("anna"):
        entry = ws.undo(image_id)
        assert entry.blocked and "changed by bob" in entry.blocked
        assert not ws.get_instance(first).deleted and ws.get_instance(first).category_id == 2  # bob's edit stays
        assert ws.undo(image_id) is None  # the dropped step is gone from anna's history


def test_an_edit_of_an_instance_changed_meanwhile_is_refused_with_a_fresh_view(service, image):
    image_id, instance_id = image
    anna = _observe(service, "anna", View(image_id=image_id, selected=instance_id))
    bob = _observe(service, "bob", View(image_id=image_id, selected=instance_id))
    act(service, "bob", bob, service.actions.set_category, 2)
    service.presence.take_over("anna", image_id)  # (presence is tested below)
    with pytest.raises(StaleEdit, match=f"#{instance_id} was changed by bob"):
        act(service, "anna", anna, service.actions.set_category, 1)
    assert service.ws.get_instance(instance_id).category_id == 2  # bob's update is not lost
    anna = _observe(service, "anna", anna)  # the fresh view: now anna's edit goes through
    act(service, "anna", anna, service.actions.set_category, 1)
    assert service.ws.get_instance(instance_id).category_id == 1
    # deleted meanwhile: a clear message, not "select an instance first"
    service.presence.take_over("bob", image_id)
    bob = _observe(service, "bob", bob)
    act(service, "bob", bob, service.actions.delete_selected)
    service.presence.take_over("anna", image_id)
    anna_stale = anna
    with pytest.raises(StaleEdit, match=f"#{instance_id} was deleted by bob"):
        act(service, "anna", anna_stale, service.edits.fill_holes)


def test_the_v2_to_v3_migration_keeps_work_and_marks_authors_unknown(tmp_path):
    root = tmp_path / "ws"
    (root / "images").mkdir(parents=True)
    with sqlite3.connect(root / DB_FILE_NAME) as conn:
        conn.executescript((REPO / "tests" / "app" / "data" / "workspace_v2.sql").read_text())
    with Workspace.open(root) as ws:
        assert ws.db.migrated_from == 2
        inst = ws.get_instance(1)
        assert (inst.created_by, inst.updated_by, inst.revision) == (None, None, 0) and inst.area == 80
        assert ws.get_image_record(2).review_state == "accepted" and ws.get_image_record(2).review_threshold == 0.4
        assert ws.get_image_record(1).review_state == "annotated"
        assert ws.undo(1).label == "edit mask instance 1"  # history from before accounts stays undoable
        with acting("anna"):  # by nobody in particular only: it has no author
            assert ws.undo(1) is None
            ws.set_category(1, 2)
        assert ws.get_instance(1).updated_by == "anna"
    with sqlite3.connect(root / DB_FILE_NAME) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 4


# ---- review states ------------------------------------------------------------------------------------

def test_review_transitions_are_checked_per_role_on_the_server(service, image):
    image_id, _ = image
    reviews = service.reviews
    with acting("anna"):
        with pytest.raises(ServiceError, match="Only a reviewer"):
            reviews.transition(image_id, "accepted")
        assert "in review by anna" in reviews.transition(image_id, "in_review")
    with acting("rita"):
        with pytest.raises(ServiceError, match="needs a comment"):
            reviews.transition(image_id, "rejected", "  ")
        reviews.transition(image_id, "rejected", "the date's stem is missing")
    record = service.ws.get_image_record(image_id)
    assert (record.review_state, record.reviewed_by, record.review_comment) == \
        ("rejected", "rita", "the date's stem is missing") and not record.reviewed
    with acting("anna"):
        with pytest.raises(ServiceError, match="cannot become accepted|Only a reviewer"):
            reviews.transition(image_id, "accepted")
        reviews.transition(image_id, "in_review")
    with acting("rita"):
        reviews.transition(image_id, "accepted", threshold=0.6)
    record = service.ws.get_image_record(image_id)
    assert record.reviewed and record.review_state == "accepted" and record.review_threshold == 0.6
    assert [(e.state, e.user) for e in reviews.log(image_id)] == [
        ("in_review", "anna"), ("rejected", "rita"), ("in_review", "anna"), ("accepted", "rita")]
    assert [img.id for img in service.ws.list_images(reviewed_only=True)] == [image_id]  # accepted only
    coco = service.export_dataset_dict(reviewed_only=True)
    attributes = coco["annotations"][0]["attributes"]
    assert attributes["created_by"] == "anna" and attributes["reviewed_by"] == "rita"
    assert attributes["review_state"] == "accepted"


# ---- presence --------------------------------------------------------------------------------------------

def test_presence_shows_the_editor_refuses_others_and_take_over_swaps():
    now = [0.0]
    presence = Presence(ttl=20, clock=lambda: now[0])
    presence.seen("anna", 1)
    presence.claim("anna", 1)
    presence.seen("bob", 1)
    assert presence.editor(1)[0] == "anna" and presence.viewers(1) == ["anna", "bob"]
    with pytest.raises(ServiceError, match="anna is editing this image"):
        presence.claim("bob", 1)
    assert presence.take_over("bob", 1) == "anna"
    with pytest.raises(ServiceError, match="bob is editing"):
        presence.claim("anna", 1)
    now[0] += 21  # bob's page stopped polling: the image is free again
    presence.seen("anna", 1)
    presence.claim("anna", 1)
    assert presence.editor(1)[0] == "anna"
    presence.seen("anna", 2)  # moving on ends it
    assert presence.editor(1) is None


def test_a_read_only_viewer_cannot_store_an_edit(service, image):
    image_id, instance_id = image
    anna = _observe(service, "anna", View(image_id=image_id, selected=instance_id))
    act(service, "anna", anna, service.actions.toggle_hidden)
    bob = _observe(service, "bob", View(image_id=image_id, selected=instance_id))
    with pytest.raises(ServiceError, match="anna is editing this image"):
        act(service, "bob", bob, service.actions.set_category, 2)
    assert service.ws.get_instance(instance_id).category_id == 1


# ---- one app per workspace ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_app_on_the_workspace_is_refused_and_a_stale_lock_is_taken_over(tmp_path, tiny_weights):
    root = tmp_path / "ws"
    held = WorkspaceLock(root)
    assert held.acquire() is None
    with pytest.raises(LockError, match=f"in use by another CondInst Studio app \\(PID {os.getpid()}"):
        WorkspaceLock(root).acquire()
    result = run_app("--weights", str(tiny_weights), "--workspace", str(root), "--port", "7999")
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: the workspace {root.resolve()} is in use by another CondInst Studio app (PID {os.getpid()}")
    held.release()
    # a killed app leaves its PID in the file but no OS lock: the next one takes it over and says so
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / "app.lock").write_text(f"pid={dead.stdout.strip()}\nhost=x\nsince=then\n")
    lock = WorkspaceLock(root)
    assert "stale workspace lock of PID" in lock.acquire()
    lock.release()


def test_a_poll_starts_from_the_sessions_latest_view_and_keeps_the_status(service, image):
    """A poll's gr.State input may predate an edit of the same session that ran meanwhile: the poll then
    refreshes the view that edit sent (its selection), never the older one, and leaves the status line alone."""
    from types import SimpleNamespace

    from app.web.handlers import Handlers

    image_id, instance_id = image
    h = Handlers(service)
    anna = SimpleNamespace(username="anna", session_hash="anna-tab")
    old = View(image_id=image_id)
    with h.team.context((old,), anna):
        out = h.on_select_instance(old, instance_id)
        h.team.sent(out)  # (app.web.guard.guarded does this after every event)
        assert h.team.on_poll(old)[0].__class__ is not View  # nothing changed: all outputs skipped
    with acting("bob"):
        service.ws.set_category(instance_id, 2)  # someone else's change: the poll refreshes
    with h.team.context((old,), anna):
        polled = h.team.on_poll(old)
    assert polled[0].selected == instance_id and polled[0].seen[instance_id] == 1  # the latest view, refreshed
    assert polled[10].__class__ is not str  # the status line is not replaced
