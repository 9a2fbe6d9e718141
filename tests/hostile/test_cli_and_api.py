"""Hostile and unlucky inputs through the command lines, model files and the HTTP API (issue 20,
observations 7, 8, 9, 10, 13, 14): one clear `error:` line (or one refusal message), nothing left
behind, no traceback, no response cut short.

The HTTP API tests drive the app as tests/app/test_api.py does (gradio_client against an app served
on a free 127.0.0.1 port), with the fixtures of tests/app/conftest.py.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from condinst.errors import user_message
from condinst.scale import PartsError, PartStore
from testutils import REPO


def _app_fixtures():
    """tests/app/conftest.py as a module: its fixtures (the tiny model, images, app_factory) are reused here."""
    spec = importlib.util.spec_from_file_location("app_test_fixtures", REPO / "tests" / "app" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fx = _app_fixtures()
tiny_weights, image_paths, samples_dir, app_factory = _fx.tiny_weights, _fx.image_paths, _fx.samples_dir, _fx.app_factory
one_torch_thread = _fx.one_torch_thread  # autouse: one intra-op thread for the tiny model

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
SMALL = ["--min-size", "128", "--max-size", "192", "--workers", "0"]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`python -m condinst ARGV` in this process: (exit code, stdout, stderr)."""
    from condinst.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert code not in (0, None), err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def onnx_file(path: Path, kind: str) -> Path:
    """A `.onnx` the ONNX runner must refuse: garbage bytes, empty, another model's graph (no metadata),
    another graph carrying our metadata, our metadata with a config that is not JSON."""
    import onnx
    from onnx import helper

    if kind == "garbage":
        path.write_bytes(b"\x08\x07garbage, not a protobuf of a model" * 20)
        return path
    if kind == "empty":
        path.write_bytes(b"")
        return path
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["boxes"])], "other",
                              [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, [1, 3, 64, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if kind != "other":
        from condinst.export import CONFIG_KEY, GRAPH_KEY

        config = json.dumps(_fx.tiny_config().to_dict()) if kind == "foreign" else "{not json"
        for key, value in ((CONFIG_KEY, config), (GRAPH_KEY, "whole")):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


ONNX_KINDS = ["garbage", "empty", "other", "foreign", "bad-config"]


# ---- 7: a failed start leaves no OUTPUT.parts/ -------------------------------------------------------------

def test_a_failed_start_leaves_no_parts_and_the_corrected_run_works(tmp_path, tiny_weights, photo, capsys):
    out = tmp_path / "results.json"
    store = PartStore(out)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    failing = [["--weights", str(tmp_path / "garbage.pth")],
               ["--weights", str(onnx_file(tmp_path / "garbage.onnx", "garbage"))],
               ["--weights", str(tiny_weights), "--config", "MS_R_50_1x"]]  # another architecture than the weights
    for weights in failing:
        code, stdout, err = cli(["predict", *weights, "--input", str(photo), "--output", str(out), *SMALL], capsys)
        assert_one_error_line(code, err)
        assert not store.exists() and not out.exists() and "instances in" not in stdout, weights
    code, stdout, err = cli(["predict", "--weights", str(tiny_weights), "--input", str(photo), "--output", str(out),
                             *SMALL], capsys)
    assert code == 0, err
    assert "instances in" in stdout and isinstance(json.loads(out.read_text()), list) and not store.exists()


def test_only_a_parts_folder_without_finished_parts_is_discarded(tmp_path):
    store = PartStore(tmp_path / "r.json")
    store.start({"weights": "a.pth"})
    (store.folder / ".part-0-x.json.ab12.tmp").write_text("{")  # a write a failure interrupted
    store.discard_if_empty()
    assert not store.exists()  # nothing was finished: nothing to resume
    store.start({"weights": "a.pth"})
    store.write(0, [("x", [])])
    store.discard_if_empty()
    assert store.exists() and set(store.done()) == {"x"}  # a finished part is kept for --resume
    with pytest.raises(PartsError, match="other settings"):
        store.check({"weights": "b.pth"})


# ---- 8: a full disk is one line ------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """Writes report ENOSPC without a file name (often only at flush / fsync): the atomic writer names it."""
    import condinst.io as cio
    from condinst.visualize import save_picture

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cio.os, "fsync", full)
    target = tmp_path / "vis" / "photo.png"
    with pytest.raises(OSError) as caught:
        save_picture(target, np.zeros((8, 8, 3), np.uint8))
    assert user_message(caught.value) == f"{target}: No space left on device"
    assert not target.exists() and not list(target.parent.iterdir())  # no half-written file, no temporary


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE write errors")
def test_predict_vis_onto_a_full_disk_says_so_in_one_line(tmp_path, tiny_weights):
    """End to end: a file-size limit makes the kernel fail writes past 100 kB (EFBIG, as a full disk
    fails them with ENOSPC): the --vis picture of a noisy photo cannot be written."""
    photo = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo)

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "condinst", "predict", "--weights", str(tiny_weights), "--input",
                           str(photo), "--output", str(out), "--vis", str(tmp_path / "vis"), *SMALL], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, preexec_fn=limited)
    line = assert_one_error_line(proc.returncode, proc.stderr, str(tmp_path / "vis" / "noise.png"))
    assert "File too large" in line and not out.exists() and not PartStore(out).exists()
    assert not list((tmp_path / "vis").glob("*")) if (tmp_path / "vis").exists() else True


# ---- 10: model files that are not ours -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_predict_refuses_a_bad_onnx_in_one_line_before_any_work(tmp_path, photo, kind, capsys):
    out = tmp_path / "r.json"
    weights = onnx_file(tmp_path / "model.onnx", kind)
    code, stdout, err = cli(["predict", "--weights", str(weights), "--input", str(photo), "--output", str(out)], capsys)
    assert_one_error_line(code, err, str(weights))
    assert "instances in" not in stdout and not out.exists() and not PartStore(out).exists()


@pytest.mark.parametrize("kind", ["garbage", "empty", "foreign"])
def test_evaluate_refuses_a_bad_onnx_in_one_line(tmp_path, photo, kind, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": photo.name, "height": 90, "width": 120}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400,
                                                "bbox": [10, 10, 20, 20],
                                                "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}],
                               "categories": [{"id": 1, "name": "date"}]}))
    weights = onnx_file(tmp_path / "model.onnx", kind)
    code, _, err = cli(["evaluate", "--weights", str(weights), "--ann", str(ann), "--images", str(photo.parent),
                        "--device", "cpu", "--no-progress"], capsys)
    assert_one_error_line(code, err, str(weights))


@pytest.mark.parametrize("kind", ["garbage", "empty", "other", "foreign"])
def test_the_app_refuses_a_bad_onnx_at_start_in_one_line(tmp_path, kind, monkeypatch):
    import app.__main__ as app_main
    from app.__main__ import main

    def served(*args, **kwargs):
        raise AssertionError("the app started serving with this model file")

    monkeypatch.setattr(app_main, "launch", served)
    weights = onnx_file(tmp_path / "model.onnx", kind)
    with pytest.raises(SystemExit) as stop:
        main(["--weights", str(weights), "--workspace", str(tmp_path / "ws"), "--port", str(_fx.free_port())])
    message = str(stop.value.code)
    assert message.startswith("error: cannot load the model: ") and str(weights) in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "ws").exists()  # a failed start leaves nothing behind (the lock's folder went again)


def test_a_checkpoint_that_does_not_load_leaves_no_workspace_and_names_what_it_is(tmp_path, monkeypatch):
    import argparse

    import torch

    import app.__main__ as app_main
    from app.__main__ import main

    monkeypatch.setattr(app_main, "launch", lambda *a, **k: pytest.fail("the app started serving"))
    garbage, unsafe = tmp_path / "garbage.pth", tmp_path / "unsafe.pth"
    garbage.write_bytes(b"garbage\n")
    torch.save({"args": argparse.Namespace(lr=1)}, unsafe)
    existing = tmp_path / "mine"
    existing.mkdir()
    for weights, workspace, expected in ((garbage, tmp_path / "new" / "ws", "not a readable PyTorch checkpoint"),
                                         (unsafe, existing, "Python objects besides tensors (argparse.Namespace)")):
        with pytest.raises(SystemExit) as stop:
            main(["--weights", str(weights), "--workspace", str(workspace), "--port", str(_fx.free_port())])
        message = str(stop.value.code)
        assert message.startswith("error: cannot load the model: ") and expected in message, message
        assert "Weights only load failed" not in message and len(message.splitlines()) == 1
    assert not (tmp_path / "new").exists()
    assert existing.is_dir()  # the person's folder stays (its released lock file may stay with it)


# ---- 14: test sizes are bounded before anything is allocated ------------------------------------------------------

def test_huge_test_sizes_are_refused_while_the_arguments_are_read(tmp_path, tiny_weights, capsys):
    """`--min-size 100000 --max-size 100000` on a 1 x 1 image allocated over 6 GB before anything said no."""
    one_pixel = tmp_path / "one.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(one_pixel)
    out = tmp_path / "r.json"
    for sizes in (["--min-size", "100000", "--max-size", "100000"], ["--max-size", "4097"]):
        code, stdout, err = cli(["predict", "--weights", str(tiny_weights), "--input", str(one_pixel), "--output",
                                 str(out), *sizes], capsys)
        assert_one_error_line(code, err, sizes[0], "at most 4096 pixels")
        assert "instances in" not in stdout and not PartStore(out).exists()


def test_a_resize_past_the_input_budget_is_refused_before_it_is_allocated():
    """A config (YAML, checkpoint, ONNX metadata) can carry any test size: the computed resize is checked."""
    from condinst.config import InputConfig
    from condinst.preprocess import ImageError, resize_for_test
    from condinst.scale import SizeBatcher

    one_pixel = np.zeros((1, 1, 3), np.uint8)
    tracemalloc.start()
    try:
        for resize in ("shortest_edge", "mmcv_rescale", "mmcv_resize"):
            inp = InputConfig(min_size_test=100_000, max_size_test=100_000, resize=resize)
            with pytest.raises(ImageError, match="1x1 image resized to 100000x100000"):
                resize_for_test(one_pixel, inp)
            with pytest.raises(ImageError, match="a model input may have"):
                SizeBatcher(1, 100_000, 100_000, 32, resize).padded_size(1, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the 30 GB picture was allocated
    from condinst.preprocess import MAX_INPUT_PIXELS
    from condinst.validate import MAX_TEST_SIZE

    assert MAX_TEST_SIZE ** 2 <= MAX_INPUT_PIXELS
    assert resize_for_test(one_pixel, InputConfig(min_size_test=MAX_TEST_SIZE, max_size_test=MAX_TEST_SIZE)).shape \
        == (MAX_TEST_SIZE, MAX_TEST_SIZE, 3)  # the largest allowed size still works


# ---- 13: the HTTP API validates its inputs -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(app_factory):
    return app_factory()


@pytest.fixture(scope="module")
def image_ids(app, image_paths):
    from gradio_client import Client, handle_file

    Client(app.url, verbose=False, analytics_enabled=False).predict(
        [handle_file(str(p)) for p in image_paths[:2]], api_name="/upload")
    return [img.id for img in app.service.ws.list_images()]


def _client(app, tmp_path=None, download=False):
    from gradio_client import Client

    return Client(app.url, verbose=False, analytics_enabled=False, download_files=str(tmp_path) if download else False)


def _on_an_instance(app, client, image_id):
    """The session shows `image_id` with its first instance selected (so that edits reach the service)."""
    client.predict(api_name="/load")
    client.predict(image_id, api_name="/go_to_image")
    first = app.service.ws.instances(image_id)[0]
    client.predict(first.id, api_name="/select_instance")


# Endpoints not swept: they take files, or run the model over every image (their numbers are swept elsewhere).
NOT_SWEPT = {"/upload", "/import_dataset", "/preview_import", "/segment_all", "/rerun", "/recover_workspace"}
HOSTILE = {"number": ["x", None, [1, 2], True, 1e300, -(2 ** 70), 2.5],
           "bool": ["x", None, [True]],
           "str": [[1, 2], 5]}
FALLBACK = {"number": 5, "bool": False, "str": ""}  # for parameters without a default (a valid value)


def _kind(parameter: dict) -> str:
    kind = str(parameter.get("python_type", {}).get("type", ""))
    return "bool" if kind == "bool" else "str" if kind == "str" else "number"


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_every_api_parameter_refuses_wrong_values_with_one_clear_message(app, image_ids, capfd):
    """Every endpoint, every parameter: strings, None, lists, dicts, booleans, huge, negative and fractional
    numbers where numbers go (text where text goes): a refusal that names the parameter, or the service's
    own warning, never Gradio's "Could not preprocess" and nothing in the server log."""
    from gradio_client.exceptions import AppError

    client = _client(app)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    swept, refused = 0, 0
    capfd.readouterr()
    for name, endpoint in endpoints.items():
        params = endpoint["parameters"]
        if name in NOT_SWEPT or not params:
            continue
        _on_an_instance(app, client, image_ids[0])
        defaults = [FALLBACK[_kind(p)] if p.get("parameter_default") is None else p["parameter_default"]
                    for p in params]
        for k, param in enumerate(params):
            for value in HOSTILE[_kind(param)]:
                args = list(defaults)
                args[k] = value
                swept += 1
                try:
                    client.predict(*args, api_name=name)
                except AppError as exc:
                    refused += 1
                    message = str(exc)
                    assert "preprocess" not in message and "Traceback" not in message, (name, value, message)
                    assert message.startswith(f"{param['parameter_name']}: expects "), (name, value, message)
                    assert len(message.splitlines()) == 1
    log = capfd.readouterr().err
    assert "Traceback" not in log and "Error" not in log, log[-3000:]
    assert swept > 300 and refused > swept // 2  # the sweep did reach the checks


def _raw_call(app, api_name: str, body: str) -> tuple[str, str]:
    """POST a raw JSON body (NaN and Infinity are not JSON, so clients cannot send them; a script can)
    to Gradio's call API; returns the answer's event ("complete", "error") and its message."""
    import httpx

    base = app.url.rstrip("/") + "/gradio_api/call/" + api_name
    posted = httpx.post(base, content=body, headers={"Content-Type": "application/json"}, timeout=60)
    posted.raise_for_status()
    answer = httpx.get(f"{base}/{posted.json()['event_id']}", timeout=120).text
    events = [line.split(":", 1)[1].strip() for line in answer.splitlines() if line.startswith("event:")]
    data = [json.loads(line.split(":", 1)[1]) for line in answer.splitlines() if line.startswith("data:")]
    message = data[-1].get("error") if isinstance(data[-1], dict) else data[-1]
    return events[-1], str(message)


@pytest.mark.parametrize("api_name, data, parameter", [
    ("set_threshold", "[null, NaN]", "threshold"),
    ("set_threshold", "[null, Infinity]", "threshold"),
    ("set_display", "[null, -Infinity, true]", "opacity"),
    ("select_instance", "[null, NaN]", "instance_id"),
    ("click_image", '[null, NaN, 5, "select", 21, 0, false]', "x"),
    ("explain_point", "[null, 3, Infinity]", "y"),
    ("retrain_start", "[null, NaN, 2, false]", "iterations"),
    ("remove_specks", "[null, Infinity]", "min_pixels"),
    ("propagate_preview", "[null, NaN]", "num_frames"),
    ("label_qa", "[NaN]", "score"),
])
def test_nan_and_infinity_sent_raw_are_refused_by_name(app, api_name, data, parameter, capfd):
    capfd.readouterr()
    event, message = _raw_call(app, api_name, '{"data": ' + data + "}")
    assert event == "error" and message.startswith(f"{parameter}: expects "), (event, message)
    assert "Traceback" not in capfd.readouterr().err


def test_points_text_with_hostile_numbers_is_refused(app, image_ids):
    """Numbers inside the text parameters (points as JSON): NaN, 1e308, nesting, not a list."""
    client = _client(app)
    _on_an_instance(app, client, image_ids[0])
    for points in ('[[NaN, 1], [2, 3]]', "[[1e308, 1e308], [2, 3]]", "[" * 100_000, '{"x": 1}', "[[1, 2, 3]]"):
        out = client.predict("brush", points, 9, "overlap", 0, api_name="/stroke")
        assert out[7].startswith("**Not done:**"), (points[:40], out[7])
        out = client.predict(points, "new", 1, "overlap", api_name="/polygon")
        assert out[7].startswith("**Not done:**"), (points[:40], out[7])
        out = client.predict(points, "[]", 0, api_name="/refine")
        assert out[7].startswith("**Not done:**"), (points[:40], out[7])


# ---- 9: a picture being served is never rewritten -------------------------------------------------------------------

def test_a_served_picture_is_never_rewritten_when_another_session_shows_it(app, image_ids):
    """Two sessions on one image get the same overlay picture. Gradio rewrote that file in place for the
    second one (truncate, then write) while the first response could still be streaming it: a cut
    response ("Too little data for declared Content-Length"). Now the file, once written, is never
    written again: its modification time, set far back here, stays."""
    first, second = _client(app), _client(app)
    shown = first.predict(api_name="/load")
    shown = first.predict(image_ids[1], api_name="/go_to_image")
    served = Path(shown[0]["path"])
    content = served.read_bytes()
    os.utime(served, (1, 1))  # as if written long ago
    second.predict(api_name="/load")
    again = second.predict(image_ids[1], api_name="/go_to_image")
    assert Path(again[0]["path"]) == served  # the same picture, the same file
    assert served.stat().st_mtime == 1 and served.read_bytes() == content  # not written again


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_every_served_response_is_whole_under_concurrent_sessions(app, image_ids):
    """Bounded: 8 sessions x 6 rounds switch between two images and fetch the pictures they are sent;
    every body is as long as its Content-Length and decodes."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def session(k: int) -> list[tuple[int, int]]:
        client, sizes = _client(app), []
        client.predict(api_name="/load")
        with httpx.Client(timeout=60) as http:
            for round_ in range(6):
                out = client.predict(image_ids[(k + round_) % 2], api_name="/go_to_image")
                response = http.get(out[0]["url"])
                assert response.status_code == 200
                Image.open(io.BytesIO(response.content)).load()
                sizes.append((int(response.headers["content-length"]), len(response.content)))
        return sizes

    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = [pair for result in pool.map(session, range(8)) for pair in result]
    assert len(sizes) == 48 and all(declared == received for declared, received in sizes)
