"""Issue 10 at the service level: stroke / polygon geometry, overlap rules, holes, specks, refine, undo."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from app.annotate import editing
from app.errors import ServiceError
from app.service import Service

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.fixture
def service(tmp_path, tiny_weights, samples_dir):
    svc = Service.create(tmp_path / "ws", tiny_weights, samples_dir=samples_dir)
    yield svc
    svc.close()


@pytest.fixture
def opened(service, image_paths):
    report = service.images.add_files(image_paths[:2])
    return service, service.actions.go_to(service.initial_view(), report.new_ids[0])


def expected_stroke(shape, points, width) -> np.ndarray:
    """The brush geometry drawn independently on the full canvas."""
    canvas = np.zeros(shape, np.uint8)
    pts = [tuple(int(v) for v in p) for p in points]
    if len(pts) == 1:
        cv2.circle(canvas, pts[0], width // 2, 1, -1)
    for a, b in zip(pts, pts[1:]):
        cv2.line(canvas, a, b, 1, width)
    return canvas.astype(bool)


def test_parse_points_and_width_refuse_bad_input():
    assert editing.parse_points("[[1, 2], [3.5, 4]]").tolist() == [[1, 2], [3.5, 4]]
    for bad in ("[1, 2]", "nope", "[[1, 2, 3]]", "[[1, NaN]]", "[]"):
        with pytest.raises(ServiceError):
            editing.parse_points(bad)
    for bad in (0, "x", float("inf"), 5000):
        with pytest.raises(ServiceError):
            editing.check_width(bad)


def test_stroke_window_equals_the_full_canvas_drawing_and_clips_at_the_border():
    shape = (120, 160)
    points = np.array([[5, 5], [60, 40], [155, 118], [159, 119]], float)
    window = editing.stroke_window(points, 15, shape)
    assert np.array_equal(window.full(shape), expected_stroke(shape, points, 15))
    assert editing.stroke_window(np.array([[500.0, 500.0]]), 5, shape) is None
    dot = editing.stroke_window(np.array([[50.0, 50.0]]), 9, shape)
    assert np.array_equal(dot.full(shape), expected_stroke(shape, [[50, 50]], 9))


def test_fill_holes_and_remove_specks():
    mask = np.zeros((60, 60), bool)
    mask[10:40, 10:40] = True
    mask[20:25, 20:25] = False  # a hole
    mask[50:52, 50:52] = True  # a 4-px speck
    filled = editing.fill_holes(mask)
    assert filled[20:25, 20:25].all() and filled.sum() == mask.sum() + 25
    cleaned = editing.remove_specks(mask, 10)
    assert not cleaned[50:52, 50:52].any() and cleaned.sum() == mask.sum() - 4
    assert editing.remove_specks(mask, 10_000).sum() == mask.sum() - 4  # the largest part always stays


def test_brush_stroke_new_instance_then_erase_each_one_undo_step(opened):
    service, view = opened
    ws = service.ws
    record = ws.get_image_record(view.image_id)
    shape = (record.height, record.width)
    points = [[30, 40], [80, 45], [120, 90]]
    view = service.actions.select(view, None)
    view, message = service.edits.stroke(view, "brush", json.dumps(points), 11)
    new = ws.get_instance(view.selected)
    assert "Added instance" in message and new.source == "user"
    assert np.array_equal(new.mask, expected_stroke(shape, points, 11))
    view, _ = service.edits.stroke(view, "erase", "[[80, 45]]", 7)
    expected = expected_stroke(shape, points, 11) & ~expected_stroke(shape, [[80, 45]], 7)
    assert np.array_equal(ws.get_instance(new.id).mask, expected)
    service.actions.undo(view)
    assert np.array_equal(ws.get_instance(new.id).mask, expected_stroke(shape, points, 11))
    service.actions.undo(view)
    assert ws.get_instance(new.id).deleted
    with pytest.raises(ServiceError, match="erase from"):
        service.edits.stroke(service.actions.select(view, None), "erase", "[[1, 1]]", 5)


def test_overlap_rules_change_other_instances_in_the_same_undo_step(opened):
    service, view = opened
    ws = service.ws
    record = ws.get_image_record(view.image_id)
    shape = (record.height, record.width)
    base = np.zeros(shape, bool)
    base[50:100, 50:100] = True
    other = ws.add_instance(view.image_id, ws.categories()[0].id, base)
    square = [[40, 40], [90, 40], [90, 90], [40, 90]]
    view = service.actions.select(view, None)
    view, _ = service.edits.polygon(view, json.dumps(square), "new", None, "under")
    under = ws.get_instance(view.selected).mask
    assert not (under & base).any() and under[45, 45]
    service.actions.undo(view)
    view, message = service.edits.polygon(service.actions.select(view, None), json.dumps(square), "new", None, "over")
    over = ws.get_instance(view.selected).mask
    assert over[60, 60] and not ws.get_instance(other).mask[60, 60] and "cut from 1" in message
    service.actions.undo(view)  # one step brings back both
    assert ws.get_instance(other).mask[60, 60] and ws.get_instance(view.selected).deleted


def test_polygon_add_and_cut_on_the_selected_instance(opened):
    service, view = opened
    ws = service.ws
    record = ws.get_image_record(view.image_id)
    shape = (record.height, record.width)
    tri = [[10, 10], [70, 10], [10, 70]]
    view, _ = service.edits.polygon(service.actions.select(view, None), json.dumps(tri), "new")
    target = view.selected
    expected = np.zeros(shape, np.uint8)
    cv2.fillPoly(expected, [np.array(tri, np.int32).reshape(-1, 1, 2)], 1)
    assert np.array_equal(ws.get_instance(target).mask, expected.astype(bool))
    view, _ = service.edits.polygon(view, "[[20, 20], [30, 20], [30, 30], [20, 30]]", "cut")
    assert not ws.get_instance(target).mask[20:31, 20:31].any()
    view, message = service.edits.fill_holes(view)
    assert ws.get_instance(target).mask[20:31, 20:31].all() and "Filled 121 px" in message
    with pytest.raises(ServiceError):
        service.edits.polygon(view, "[[1, 1], [2, 2]]", "new")


def test_refine_proposes_accepts_discards_and_undoes(opened):
    service, view = opened
    ws = service.ws
    target = max(ws.instances(view.image_id), key=lambda inst: inst.area)
    ys, xs = np.nonzero(target.mask)
    click = [int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]
    view = service.actions.select(view, None)
    count = len(ws.instances(view.image_id))
    view, message = service.refiner.refine(view, json.dumps([click]), "[]")
    assert view.refine is not None and view.refine.mask[click[1], click[0]] and "new instance" in message
    assert len(ws.instances(view.image_id)) == count  # only a proposal
    discarded, _ = service.refiner.discard(view)
    assert discarded.refine is None
    view, message = service.refiner.accept(view)
    new = ws.get_instance(view.selected)
    assert new.mask[click[1], click[0]] and len(ws.instances(view.image_id)) == count + 1
    service.actions.undo(view)
    assert len(ws.instances(view.image_id)) == count
    with pytest.raises(ServiceError, match="Nothing to accept"):
        service.refiner.accept(view)
    # refining a selected instance with a negative click inside it removes that click's pixels
    view = service.actions.select(view, target.id)
    view, _ = service.refiner.refine(view, json.dumps([click]), json.dumps([[int(xs[0]), int(ys[0])]]))
    assert view.refine.target == target.id and not view.refine.mask[ys[0], xs[0]]
    view, _ = service.refiner.accept(view)
    assert not ws.get_instance(target.id).mask[ys[0], xs[0]]


def test_refine_later_click_changes_only_its_own_part():
    from condinst.refine import local_update

    prior = np.zeros((200, 200), bool)
    prior[50:150, 50:150] = True  # the proposal so far
    proposal = np.zeros_like(prior)
    proposal[50:150, 60:170] = True  # a new proposal: right band added, left band lost
    # a positive click in the right band takes that band only (its corners rounded by the opening);
    # the left band keeps the prior's value
    grown = local_update(prior, proposal, [((160, 100), True)], [((100, 100), True), ((160, 100), True)])
    assert grown[51:149, 150:169].all() and grown[50:150, 50:150].all() and 100 * 119 < grown.sum() <= 100 * 120
    assert not grown[:50].any() and not grown[150:].any() and not grown[:, 170:].any()
    # a negative click in the left band (the proposal cuts it): only that band goes
    cut = local_update(prior, proposal, [((55, 100), False)], [((100, 100), True), ((55, 100), False)])
    assert not cut[51:149, :59].any() and cut[50:150, 60:150].all() and not cut[:, 150:].any()
    # a change holding a click of the other value is refused; a proposal that misses the click changes nothing
    refused = local_update(prior, proposal, [((160, 100), True)], [((160, 100), True), ((165, 60), False)])
    assert (refused == prior).all()
    assert (local_update(prior, prior, [((160, 100), True)], [((160, 100), True)]) == prior).all()


def test_click_view_brush_is_a_one_point_canvas_stroke_with_its_overlap_rule(opened):
    """A Click-view brush click goes through the canvas's stroke: same disc, same overlap rule, one undo step."""
    service, view = opened
    ws = service.ws
    record = ws.get_image_record(view.image_id)
    shape = (record.height, record.width)
    category = ws.categories()[0].id
    mine, theirs = np.zeros(shape, bool), np.zeros(shape, bool)
    mine[20:40, 20:40] = True
    theirs[50:100, 50:100] = True
    target, other = ws.add_instance(view.image_id, category, mine), ws.add_instance(view.image_id, category, theirs)
    view = service.actions.select(view, target)
    result = service.actions.click(view, 55, 55, "brush", size=15, overlap="over")
    dot = expected_stroke(shape, [[55, 55]], 15)
    assert np.array_equal(ws.get_instance(target).mask, mine | dot)
    assert np.array_equal(ws.get_instance(other).mask, theirs & ~dot) and "cut from 1" in result.message
    assert result.view.last_point == (target, 55, 55)
    service.actions.undo(result.view)  # one step brings back both
    assert np.array_equal(ws.get_instance(target).mask, mine) and np.array_equal(ws.get_instance(other).mask, theirs)
    result = service.actions.click(view, 60, 60, "brush", size=9, overlap="under")
    assert np.array_equal(ws.get_instance(target).mask, mine) and "No change" in result.message
    joined = service.actions.click(service.actions.click(view, 10, 10, "brush", size=5).view, 10, 30, "brush",
                                   size=5, join=True)
    assert np.array_equal(ws.get_instance(target).mask,
                          mine | expected_stroke(shape, [[10, 10]], 5) | expected_stroke(shape, [[10, 10], [10, 30]], 5))
    assert joined.view.last_point == (target, 10, 30)


def test_a_stroke_reads_its_instance_and_image_once(opened, monkeypatch):
    """One stroke on the selected instance: one read of that instance and its mask, one of the image's size (the
    write's own check aside), whatever the overlap rule."""
    service, view = opened
    ws = service.ws
    record = ws.get_image_record(view.image_id)
    mask = np.zeros((record.height, record.width), bool)
    mask[20:60, 20:60] = True
    target = ws.add_instance(view.image_id, ws.categories()[0].id, mask)
    view = service.actions.select(view, target)
    reads = {"instance": 0, "image": 0}
    workspace_type = type(ws)
    get_instance, get_image_record = workspace_type.get_instance, workspace_type.get_image_record

    def counted_instance(self, instance_id):
        reads["instance"] += instance_id == target
        return get_instance(self, instance_id)

    def counted_image(self, image_id):
        reads["image"] += 1
        return get_image_record(self, image_id)

    monkeypatch.setattr(workspace_type, "get_instance", counted_instance)
    monkeypatch.setattr(workspace_type, "get_image_record", counted_image)
    view, message = service.edits.stroke(view, "erase", [[25, 30], [45, 30]], 5, overlap="over")
    assert message.startswith("Erased from") and not ws.get_instance(target).mask[30, 35]
    assert reads["instance"] == 2  # the stroke's one read, and the check above
    assert reads["image"] <= 2  # the stroke's size, and the write's (edit_masks checks its image)


def test_refine_clicks_are_hard_constraints_and_a_later_click_moves_towards_itself(opened):
    """Every click's pixel has its value after every later click (positive in, negative out), and a later
    click changes the proposal only towards its own value (a positive click adds, a negative one removes)."""
    service, view = opened
    ws = service.ws
    record = ws.get_image_record(view.image_id)
    rng = np.random.default_rng(3)
    target = max(ws.instances(view.image_id), key=lambda inst: inst.area)
    ys, xs = np.nonzero(target.mask)
    positive, negative = [[int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]], []
    view = service.actions.select(view, None)
    view, _ = service.refiner.refine(view, json.dumps(positive), "[]")
    for _ in range(6):
        before = view.refine.mask
        x, y = int(rng.integers(0, record.width)), int(rng.integers(0, record.height))
        value = not before[y, x]  # a click the proposal gets wrong
        (positive if value else negative).append([x, y])
        view, _ = service.refiner.refine(view, json.dumps(positive), json.dumps(negative))
        after = view.refine.mask
        assert all(after[py, px] for px, py in positive) and not any(after[ny, nx] for nx, ny in negative)
        assert (after[after != before] == value).all()
