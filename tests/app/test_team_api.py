"""A team in one app through gradio_client: two and eight logged-in sessions at once.

Per-person undo, concurrent edits of one instance (no lost update), presence, review transitions
and attribution in the COCO export, each checked in the workspace afterwards.
"""
from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client

from app.team.accounts import Account, Accounts, hash_password
from app.store.history import acting
from app.web.guard import WARNING
from testutils import http_timeout, scaled

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

SELECTED, INFO, STATUS = 4, 6, 7
ANNOTATORS = [f"ann{k}" for k in range(8)]
PASSWORD = "team-password"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def team_app(app_factory, image_paths):
    secret = hash_password(PASSWORD)
    people = {name: Account(name, "annotator", secret) for name in ANNOTATORS + ["anna", "bob"]}
    people["rita"] = Account("rita", "reviewer", secret)
    running = app_factory(auth=Accounts(people))
    running.service.images.add_files(image_paths[:3])
    return running


def login(app, name: str, tmp_path, download: bool = False) -> Client:
    """A logged-in session. Pictures are not downloaded: eight sessions showing the same image make Gradio
    write the same cached picture file at once, and a download racing that rewrite comes back short."""
    client = Client(app.url, auth=(name, PASSWORD), verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False,
                    download_files=str(tmp_path) if download else False)
    client.predict(api_name="/load")
    return client


def stroke_at(client: Client, x: int, y: int, width: int = 7):
    return client.predict("brush", json.dumps([[x, y], [x + 1, y]]), width, api_name="/stroke")


def test_nothing_about_the_api_is_served_before_login(team_app):
    page = requests.get(team_app.url, timeout=scaled(30)).text
    assert "window.gradio_api_info = {};" in page and "stroke" not in page
    for path in ("config", "gradio_api/info", "gradio_api/openapi.json"):
        assert requests.get(team_app.url + path, timeout=scaled(30)).status_code == 401
    assert requests.get(team_app.url + "openapi.json", timeout=scaled(30)).status_code == 404
    with pytest.raises(Exception):
        Client(team_app.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False)  # no API description without a login


def test_two_people_undo_only_their_own_edits_and_see_who_edits(team_app, tmp_path):
    ws = team_app.service.ws
    image_id = ws.list_images()[0].id
    anna, bob = login(team_app, "anna", tmp_path), login(team_app, "bob", tmp_path)
    anna.predict(image_id, api_name="/go_to_image")
    out = stroke_at(anna, 20, 20)  # a brush stroke with nothing selected: a new instance by anna
    mine = int(out[SELECTED])
    assert ws.get_instance(mine).created_by == "anna"
    out = bob.predict(image_id, api_name="/go_to_image")
    assert "anna is editing this image" in out[INFO] and "Take over" in out[INFO]
    out = bob.predict(api_name="/undo")  # bob has nothing to undo: anna's instance stays
    assert "Nothing to undo" in out[STATUS] and not ws.get_instance(mine).deleted
    out = bob.predict(mine, api_name="/select_instance")
    out = bob.predict(2, api_name="/set_class")  # read-only until bob takes over
    assert out[STATUS].startswith(WARNING) and "anna is editing" in out[STATUS]
    bob.predict(api_name="/take_over")
    out = bob.predict(2, api_name="/set_class")
    assert ws.get_instance(mine).category_id == 2 and ws.get_instance(mine).updated_by == "bob"
    out = anna.predict(api_name="/undo")  # anna's step on an instance bob changed since is not applied
    assert out[STATUS].startswith(WARNING) and "changed by bob" in out[STATUS]
    assert not ws.get_instance(mine).deleted and ws.get_instance(mine).category_id == 2
    out = bob.predict(api_name="/undo")
    assert "Undid: change category" in out[STATUS] and ws.get_instance(mine).category_id != 2
    out = anna.predict(api_name="/poll")  # anna's page learns it is now read-only
    assert "bob is editing this image" in out[INFO]


def test_a_stale_edit_gets_a_message_and_a_fresh_view(team_app, tmp_path):
    ws = team_app.service.ws
    image_id = ws.list_images()[1].id
    anna, bob = login(team_app, "anna", tmp_path), login(team_app, "bob", tmp_path)
    target = ws.instances(image_id)[0]
    for client in (anna, bob):
        client.predict(image_id, api_name="/go_to_image")
        client.predict(api_name="/take_over")
        client.predict(target.id, api_name="/select_instance")
    bob.predict(api_name="/take_over")
    bob.predict(api_name="/delete_instance")
    assert ws.get_instance(target.id).deleted
    out = anna.predict(3, api_name="/set_class")  # anna's page still shows it selected
    assert out[STATUS].startswith(WARNING) and f"#{target.id} was deleted by bob" in out[STATUS]
    assert out[SELECTED] is None and target.id not in [row[0] for row in out[1]["data"]]  # the fresh view


@pytest.mark.slow
def test_eight_people_edit_one_instance_at_once_and_no_acknowledged_edit_is_lost(team_app, tmp_path):
    ws = team_app.service.ws
    image_id = ws.list_images()[2].id
    record = ws.get_image_record(image_id)
    with acting("rita"):
        shared = ws.add_instance(image_id, 1, np.zeros((record.height, record.width), bool) | _disc(record, 5, 5))
    clients = [login(team_app, name, tmp_path) for name in ANNOTATORS]
    spots = [(40 + 30 * k, 60 + 8 * k) for k in range(8)]
    acks, errors, turn = [], [], [0]

    def person(k: int):
        try:
            edit(k)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))

    def edit(k: int):
        """Everyone strokes the shared instance over and over; person k's stroke gets through in k's turn (after
        taking over), possibly after a stale-edit refusal (someone stroked it since k's page last showed it)."""
        client, rng = clients[k], random.Random(k)
        client.predict(image_id, api_name="/go_to_image")
        client.predict(shared, api_name="/select_instance")
        started, mine = time.monotonic(), False
        while turn[0] < 8 and time.monotonic() - started < scaled(300):
            if turn[0] == k and not mine:
                client.predict(api_name="/take_over")
            out = stroke_at(client, *spots[k])
            status = str(out[STATUS])
            if not status.startswith(WARNING):
                if status.startswith("Painted"):  # (a repeated stroke says "No change")
                    acks.append((k, status))
                if turn[0] == k:
                    mine, turn[0] = True, k + 1
            elif "is editing this image" not in status and "after you last saw it" not in status:
                errors.append(f"{ANNOTATORS[k]}: {status}")
            time.sleep(rng.uniform(0.0, 0.2))

    threads = [threading.Thread(target=person, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=scaled(600))
    assert not errors and turn[0] == 8 and sorted({k for k, _ in acks}) == list(range(8))
    mask = ws.get_instance(shared).mask
    assert all(mask[spots[k][1], spots[k][0]] for k, _ in acks), "an acknowledged stroke was lost"
    with ws.db.read() as conn:
        authors = [row[0] for row in conn.execute("SELECT user FROM history WHERE image_id = ? AND label LIKE"
                                                  " 'brush%' ORDER BY id", (image_id,))]
    assert len(authors) == len(acks) and sorted(set(authors)) == sorted(ANNOTATORS)
    # each undoes exactly their own stroke, newest first (an older one waits until nobody changed it since)
    for name in reversed(authors):
        client = clients[ANNOTATORS.index(name)]
        client.predict(api_name="/take_over")
        assert "Undid: brush" in client.predict(api_name="/undo")[STATUS]
    mask = ws.get_instance(shared).mask
    assert not any(mask[y, x] for x, y in spots) and mask[5, 5]


def _disc(record, x, y, radius=4):
    yy, xx = np.ogrid[:record.height, :record.width]
    return (yy - y) ** 2 + (xx - x) ** 2 <= radius * radius


def test_review_by_a_second_person_filter_and_attribution_in_the_export(team_app, tmp_path):
    ws = team_app.service.ws
    image_id = ws.list_images()[0].id
    anna, rita = login(team_app, "anna", tmp_path), login(team_app, "rita", tmp_path, download=True)
    anna.predict(image_id, api_name="/go_to_image")
    anna.predict(api_name="/take_over")  # (another test of this module may have left someone editing it)
    out = stroke_at(anna, 30, 12)  # anna's own instance, whatever ran before (its attribution is checked below)
    assert ws.get_instance(int(out[SELECTED])).created_by == "anna"
    out = anna.predict(api_name="/accept_image")
    assert out[STATUS].startswith(WARNING) and "Only a reviewer" in out[STATUS]
    out = anna.predict(api_name="/submit_review")
    assert "in review by anna" in out[STATUS] and ws.get_image_record(image_id).review_state == "in_review"
    out = rita.predict("in_review", api_name="/set_state_filter")
    assert [choice[1] for choice in out[2]["choices"]] == [image_id]
    out = rita.predict("", api_name="/reject_image")
    assert "needs a comment" in out[STATUS]
    rita.predict("the fig at the left is two figs", api_name="/reject_image")
    record = ws.get_image_record(image_id)
    assert (record.review_state, record.reviewed_by) == ("rejected", "rita")
    anna.predict(api_name="/submit_review")
    out = rita.predict(api_name="/accept_image")
    assert ws.get_image_record(image_id).reviewed and "accepted by rita" in out[STATUS]
    out = rita.predict(True, "rle", api_name="/export_zip")  # accepted images only
    with zipfile.ZipFile(out[0]["value"]) as archive:
        coco = json.loads(archive.read("annotations/instances_default.json"))
    assert [img["id"] for img in coco["images"]] == [image_id]
    by_id = {a["id"]: a["attributes"] for a in coco["annotations"]}
    made_by_anna = [i.id for i in ws.instances(image_id) if i.created_by == "anna"]
    assert made_by_anna and all(by_id[i]["created_by"] == "anna" for i in made_by_anna if i in by_id)
    assert {a["reviewed_by"] for a in by_id.values()} == {"rita"}
    assert {a["review_state"] for a in by_id.values()} == {"accepted"}


@pytest.mark.slow
def test_cli_import_and_export_work_alongside_the_running_app(team_app, tmp_path):
    """A second app process is refused (tests/app/test_team.py); the dataset commands share the workspace
    safely: short SQLite transactions next to the app's, while someone keeps editing."""
    from PIL import Image

    root = team_app.service.workspace_dir
    folder = tmp_path / "incoming"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 123, np.uint8)).save(folder / "incoming.png")
    dataset = {"images": [{"id": 500, "file_name": "incoming.png", "width": 50, "height": 40}],
               "annotations": [{"id": 900, "image_id": 500, "category_id": 1, "iscrowd": 0, "area": 100.0,
                                "bbox": [5, 5, 10, 10], "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]}],
               "categories": [{"id": 1, "name": "date"}]}
    (tmp_path / "incoming.json").write_text(json.dumps(dataset))
    anna = login(team_app, "anna", tmp_path)
    image_id = team_app.service.ws.list_images()[1].id
    anna.predict(image_id, api_name="/go_to_image")
    anna.predict(api_name="/take_over")
    stop, statuses = threading.Event(), []

    def keep_editing():
        k = 0
        while not stop.is_set():
            statuses.append(stroke_at(anna, 10 + (k * 13) % 200, 10 + (k * 7) % 150)[STATUS])
            k += 1

    editor = threading.Thread(target=keep_editing)
    editor.start()
    try:
        commands = [["import", "--workspace", str(root), "--ann", str(tmp_path / "incoming.json"),
                     "--images", str(folder)],
                    ["export", "--workspace", str(root), "--format", "coco", "--out", str(tmp_path / "out")]]
        runs = [subprocess.Popen([sys.executable, "-m", "app", *c], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for c in commands]
        results = [(run.wait(timeout=scaled(300)), run.stdout.read(), run.stderr.read()) for run in runs]
    finally:
        stop.set()
        editor.join(timeout=scaled(120))
    assert [code for code, _, _ in results] == [0, 0], results
    assert statuses and not [s for s in statuses if str(s).startswith(WARNING)]
    out = anna.predict(500, api_name="/go_to_image")  # the app sees the imported image at once
    assert "incoming.png" in out[INFO] and team_app.service.ws.get_instance(900).image_id == 500
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_default.json").read_text())
    assert {img["id"] for img in coco["images"]} >= {image_id}
    with sqlite3.connect(root / "workspace.sqlite") as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
