"""The canvas's edit channel (`app.web.edit_channel`), in process: the same edits and team rules as the page's
events, on the session's latest view, answering only what the canvas lacks.

A launched app's channel is called as Gradio calls a server function, with a request naming the person and the
page's session; the session is one the server knows (as after a page load).
"""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from app.view import View
from app.store.history import acting

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def running(app_factory, image_paths):
    app = app_factory()
    app.service.images.add_files(image_paths[:1])
    return app


def channel_of(app):
    fns = [fn for block in app.demo.blocks.values() for fn in getattr(block, "server_fns", [])]
    assert [fn.__name__ for fn in fns] == ["edit"]
    return fns[0]


def session(app, name: str, view: View | None = None) -> gr.Request:
    """A page session the server knows, showing the first image (or `view`), for the person `name`."""
    holder = app.demo.state_holder
    hash_ = f"test-{name}-{len(holder.session_data)}"
    state = next(b for b in app.demo.blocks.values() if isinstance(b, gr.State))
    image = app.service.ws.list_images()[0].id
    holder[hash_][state._id] = view or View(image_id=image)
    return gr.Request(username=name, session_hash=hash_)


def stored_view(app, request) -> View:
    state = next(b for b in app.demo.blocks.values() if isinstance(b, gr.State))
    return app.demo.state_holder[request.session_hash][state._id]


def interior(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    k = len(xs) // 2
    return int(xs[k]), int(ys[k])


def test_an_edit_answers_the_scene_without_the_pictures_the_canvas_holds(running):
    edit, ws = channel_of(running), running.service.ws
    request = session(running, "anna")
    target = max(ws.instances(ws.list_images()[0].id), key=lambda inst: inst.area)
    x, y = interior(target.mask)
    first = edit({"action": "pick", "x": x, "y": y}, request)
    assert first["ok"] and first["scene"]["selected"] == target.id
    assert first["scene"]["image"]["src"].startswith("data:image/jpeg")  # the canvas holds no picture yet
    have = {str(i["id"]): i["key"] for i in first["scene"]["instances"]}
    assert all(i["png"] for i in first["scene"]["instances"])
    stroke = edit({"action": "stroke", "tool": "erase", "points": [[x - 3, y], [x + 3, y]], "width": 5,
                   "have": have}, request)
    assert stroke["ok"] and stroke["message"].startswith("Erased") and stroke["undo"] is True
    rows = {i["id"]: i for i in stroke["scene"]["instances"]}
    assert "src" not in stroke["scene"]["image"]  # the photo is not sent again
    assert rows[target.id]["png"] and rows[target.id]["key"] != have[str(target.id)]  # the changed mask is sent
    assert all(i["png"] is None for i in rows.values() if i["id"] != target.id)  # the others are held
    assert not ws.get_instance(target.id).mask[y, x]  # stored, as the person
    assert ws.get_instance(target.id).updated_by == "anna"
    assert stored_view(running, request).selected == target.id  # the page's next event starts from it
    undone = edit({"action": "undo", "have": {}}, request)
    assert undone["ok"] and undone["message"].startswith("Undid") and undone["redo"] is True
    assert ws.get_instance(target.id).mask[y, x]


def test_someone_elses_change_refuses_the_edit_and_answers_the_image_as_it_is(running):
    edit, ws = channel_of(running), running.service.ws
    image = ws.list_images()[0].id
    target = max(ws.instances(image), key=lambda inst: inst.area)
    x, y = interior(target.mask)
    request = session(running, "anna")
    assert edit({"action": "pick", "x": x, "y": y}, request)["ok"]  # anna's page shows the instance
    with acting("bob"):
        ws.set_category(target.id, ws.categories()[-1].id if ws.categories()[-1].id != target.category_id
                        else ws.categories()[0].id)
    before = ws.get_instance(target.id).rle_counts
    answer = edit({"action": "stroke", "tool": "erase", "points": [[x, y]], "width": 9}, request)
    assert not answer["ok"] and "bob" in answer["message"]
    assert ws.get_instance(target.id).rle_counts == before  # nothing applied
    assert answer["scene"]["image"]["id"] == image  # the canvas redraws the image as it is now


@pytest.mark.parametrize("payload, words", [
    ("stroke", "JSON object"),
    ({"action": "teleport"}, "Unknown editor action"),
    ({"action": "pick", "x": float("nan"), "y": 3}, None),
    ({"action": "pick", "x": "x", "y": 3}, None),
    ({"action": "stroke", "tool": "brush", "points": "[[1e308, 2]]", "width": 5}, None),
    ({"action": "polygon", "points": [[1, 1]], "mode": "new"}, None),
    ({"action": "stroke", "tool": "brush", "points": [[5, 5]], "width": 5, "class": "cat"}, "class"),
])
def test_a_bad_edit_is_one_message_and_changes_nothing(running, payload, words):
    edit, ws = channel_of(running), running.service.ws
    image = ws.list_images()[0].id
    before = sorted((i.id, i.rle_counts) for i in ws.instances(image))
    answer = edit(payload, session(running, "anna"))
    assert answer["ok"] is False and answer["message"] and "Traceback" not in answer["message"]
    if words:
        assert words in answer["message"]
    assert sorted((i.id, i.rle_counts) for i in ws.instances(image)) == before


def test_an_unknown_session_is_refused(running):
    answer = channel_of(running)({"action": "undo"}, gr.Request(username="anna", session_hash="never-loaded"))
    assert answer["ok"] is False and "reload" in answer["message"]


@pytest.fixture(scope="module")
def three_images(app_factory, image_paths):
    app = app_factory()
    app.service.images.add_files(image_paths[:3])
    return app


def test_next_and_previous_go_through_the_channel_with_prefetched_pictures(three_images):
    edit, ws = channel_of(three_images), three_images.service.ws
    first, second, third = [img.id for img in ws.list_images()][:3]
    request = session(three_images, "anna", View(image_id=first))
    shown = edit({"action": "scene"}, request)
    assert shown["scene"]["image"]["id"] == first and "src" in shown["scene"]["image"]
    ahead = edit({"action": "prefetch", "pictures": [first]}, request)
    assert sorted(p["id"] for p in ahead["pictures"]) == [second, third]  # next, and previous (wrapping)
    assert all(p["src"].startswith("data:image/jpeg") for p in ahead["pictures"])
    assert stored_view(three_images, request).image_id == first  # prefetching changes nothing
    again = edit({"action": "prefetch", "pictures": [first, second, third]}, request)
    assert again["pictures"] == []  # nothing the canvas holds is sent again
    step = edit({"action": "next", "pictures": [first, second, third]}, request)
    assert step["ok"] and step["scene"]["image"]["id"] == second and "src" not in step["scene"]["image"]
    assert stored_view(three_images, request).image_id == second
    back = edit({"action": "previous"}, request)  # a canvas that holds no pictures gets the JPEG
    assert back["scene"]["image"]["id"] == first and "src" in back["scene"]["image"]
    assert edit({"action": "prefetch", "pictures": "all"}, request)["ok"]  # malformed: holds none


def test_a_brush_click_on_another_instance_selects_it_and_on_the_selected_one_paints(running):
    """A tap (a click without a drag) with the brush: the annotator's first click on an object selects it instead
    of adding a dot instance; on the selected instance it paints."""
    edit, ws = channel_of(running), running.service.ws
    image = ws.list_images()[0].id
    big, other = sorted(ws.instances(image), key=lambda inst: -inst.area)[:2]
    request = session(running, "anna", View(image_id=image, selected=other.id))
    before = len(ws.instances(image))
    x, y = interior(big.mask)
    tap = {"action": "tap", "tool": "brush", "points": [[x, y]], "width": 5}
    picked = edit(tap, request)
    assert picked["ok"] and picked["scene"]["selected"] == big.id and picked["message"].startswith("Selected")
    assert len(ws.instances(image)) == before and np.array_equal(ws.get_instance(big.id).mask, big.mask)
    # the same tap on the now selected instance, at a pixel just outside it: a dot added to it
    ys, xs = np.nonzero(big.mask)
    edge_x, edge_y = int(xs.max()), int(ys[xs.argmax()])
    painted = edit({**tap, "points": [[edge_x, edge_y]]}, request)
    assert painted["ok"] and painted["scene"]["selected"] == big.id
    assert ws.get_instance(big.id).area > big.area and len(ws.instances(image)) == before
    edit({"action": "undo"}, request)


def test_class_key_and_deselect_go_through_the_channel(running):
    edit, ws = channel_of(running), running.service.ws
    image = ws.list_images()[0].id
    inst = max(ws.instances(image), key=lambda i: i.area)
    other = next(c.id for c in ws.categories() if c.id != inst.category_id)
    request = session(running, "anna", View(image_id=image, selected=inst.id))
    changed = edit({"action": "class", "category": other}, request)
    assert changed["ok"] and ws.get_instance(inst.id).category_id == other and changed["undo"] is True
    assert "is now" in changed["message"]
    assert edit({"action": "undo"}, request)["ok"] and ws.get_instance(inst.id).category_id == inst.category_id
    cleared = edit({"action": "select", "id": None}, request)
    assert cleared["ok"] and cleared["scene"]["selected"] is None and stored_view(running, request).selected is None
    for bad in ({"action": "class", "category": "x"}, {"action": "class", "category": 10 ** 30},
                {"action": "select", "id": 2 ** 64}, {"action": "select", "id": "1"},
                {"action": "tap", "tool": "brush", "points": [[1, 2], [3, 4]]}):
        answer = edit(bad, request)
        assert answer["ok"] is False and answer["message"] and "\n" not in answer["message"]


def test_frame_steps_and_track_picks_of_a_video(app_factory, crossing_mp4):
    app = app_factory()
    app.service.images.add_files([crossing_mp4])
    edit, frames = channel_of(app), app.service.sequences.frame_ids(1)
    request = session(app, "anna", View(image_id=frames[0]))
    prefetched = edit({"action": "prefetch"}, request)
    assert [p["id"] for p in prefetched["pictures"]] == [frames[1]]  # the next frame (no other image, no frame -1)
    answer = edit({"action": "frame", "delta": 1, "pictures": [frames[1]]}, request)
    assert answer["ok"] and answer["scene"]["image"]["id"] == frames[1] and "src" not in answer["scene"]["image"]
    assert stored_view(app, request).image_id == frames[1]
    assert edit({"action": "frame", "delta": -1}, request)["scene"]["image"]["id"] == frames[0]
    assert edit({"action": "frame", "delta": -1}, request)["scene"]["image"]["id"] == frames[0]  # held at the first
    assert edit({"action": "frame", "index": 7}, request)["scene"]["image"]["id"] == frames[7]
    refused = edit({"action": "frame", "index": 8}, request)
    assert not refused["ok"] and refused["message"] == "This video has frames 0 to 7, not 8."
    assert not edit({"action": "frame", "delta": 3}, request)["ok"]
    tracked = next(i for i in app.service.ws.instances(frames[7]) if i.track_id is not None)
    picked = edit({"action": "track", "track": tracked.track_id}, request)
    assert picked["ok"] and picked["scene"]["selected"] == tracked.id
    missing = edit({"action": "track", "track": 999}, request)
    assert missing["ok"] and missing["scene"]["selected"] is None and "no instance" in missing["message"]


def test_a_tile_is_a_bounded_crop_of_the_shown_image(running):
    edit, ws = channel_of(running), running.service.ws
    request = session(running, "anna")
    image = ws.list_images()[0].id
    record = ws.get_image_record(image)
    tile = edit({"action": "tile", "image": image, "box": [-5, 10, 100000, 40]}, request)["tile"]
    assert tile["id"] == image and tile["box"] == [0, 10, min(record.width, 2048), 40]
    assert tile["src"].startswith("data:image/jpeg;base64,")
    refused = edit({"action": "tile", "image": image, "box": "everything"}, request)
    assert not refused["ok"] and refused["message"] == "A tile is [x, y, w, h] in whole image pixels."
    assert edit({"action": "tile", "image": image + 999, "box": [0, 0, 8, 8]}, request)["tile"] is None
    assert stored_view(running, request).image_id == image  # the view unchanged


def test_a_first_refine_click_on_another_instance_selects_it_and_the_next_refines_it(running):
    """Between two boundary fixes the refine tool stays on: the first click of a proposal on an instance other than
    the selected one selects it (no proposal yet); the next click proposes for it; after Esc ("new") a click on an
    instance starts a new object there."""
    edit, ws = channel_of(running), running.service.ws
    image = ws.list_images()[0].id
    big, other = sorted(ws.instances(image), key=lambda inst: -inst.area)[:2]
    request = session(running, "anna", View(image_id=image, selected=other.id))
    x, y = interior(big.mask)
    picked = edit({"action": "refine", "positive": [[x, y]], "negative": []}, request)
    assert picked["ok"] and picked["scene"]["selected"] == big.id and picked["scene"]["refine"] is None
    assert "Click again to refine it" in picked["message"]
    proposed = edit({"action": "refine", "positive": [[x, y]], "negative": []}, request)
    assert proposed["ok"] and proposed["scene"]["refine"] is not None
    assert stored_view(running, request).refine.target == big.id
    edit({"action": "refine_discard"}, request)
    edit({"action": "select", "id": None}, request)  # Esc: deselect, and the editor's next refine click is "new"
    fresh = edit({"action": "refine", "positive": [[x, y]], "negative": [], "new": True}, request)
    assert fresh["ok"] and fresh["scene"]["refine"] is not None
    assert stored_view(running, request).refine.target is None  # a new object on top of `big`
    edit({"action": "refine_discard"}, request)
    assert ws.get_instance(big.id).area == big.area  # nothing was accepted


def test_delete_with_nothing_selected_deletes_the_instance_under_the_pointer(running):
    """CVAT's hover + Delete: one key per false positive instead of a click and a key."""
    edit, ws = channel_of(running), running.service.ws
    image = ws.list_images()[0].id
    target = max(ws.instances(image), key=lambda inst: inst.area)
    request = session(running, "anna", View(image_id=image))
    before = {inst.id for inst in ws.instances(image)}
    x, y = interior(target.mask)
    hits = [inst.id for inst in running.service.actions.instances_at(View(image_id=image), x, y)]
    gone = edit({"action": "delete_at", "x": x, "y": y}, request)
    assert gone["ok"] and gone["message"] == f"Deleted instance #{hits[0]}."
    assert {inst.id for inst in ws.instances(image)} == before - {hits[0]}
    assert gone["undo"] and stored_view(running, request).selected is None
    edit({"action": "undo"}, request)
    assert {inst.id for inst in ws.instances(image)} == before
    ys, xs = np.nonzero(~np.any([inst.mask for inst in ws.instances(image)], axis=0))
    nothing = edit({"action": "delete_at", "x": int(xs[0]), "y": int(ys[0])}, request)
    assert not nothing["ok"] and nothing["message"].startswith("Nothing to delete here")
    assert {inst.id for inst in ws.instances(image)} == before
