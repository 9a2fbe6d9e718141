"""Bad input gets a clear message and the app keeps serving.

Covers: non-image and huge uploads, an empty upload, uploads over max_file_size, exporting an
empty workspace, a corrupt workspace database (start, message, recovery), login, paths from
requests that try to leave the workspace, and the command line's missing-model messages.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app.web.guard import WARNING
from app.service import ServiceError
from app.store.workspace import DB_FILE_NAME
from testutils import http_timeout, scaled

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

REPO = Path(__file__).resolve().parents[2]
STATUS = 7


@pytest.fixture(scope="module")
def app(app_factory):
    return app_factory(max_file_size="2mb")


def connect(app, tmp_path=None, **kwargs) -> Client:
    client = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False,
                    download_files=str(tmp_path) if tmp_path else "/tmp/gradio", **kwargs)
    client.predict(api_name="/load")
    return client


def warned(message: str, text: str) -> bool:
    """A non-blocking warning: the status line says what was not done."""
    return message.startswith(WARNING) and text in message


def test_non_image_and_huge_uploads_are_rejected_others_kept(app, image_paths, tmp_path):
    client = connect(app, tmp_path)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4 definitely not an image")
    with pytest.raises(Exception, match="Invalid file type"):  # gradio's own check (file_types)
        client.predict([handle_file(str(pdf))], api_name="/upload")
    fake = tmp_path / "fake.jpg"
    fake.write_text("a text file named like an image")
    huge = tmp_path / "huge.jpg"
    Image.new("RGB", (12000, 9000)).save(huge, quality=10)  # small file, 108 MP
    assert huge.stat().st_size < 2 * 2**20
    out = client.predict([handle_file(str(fake)), handle_file(str(huge)), handle_file(str(image_paths[2]))],
                         api_name="/upload")
    assert "Added 1 new image(s)" in out[STATUS]
    assert "fake.jpg" in out[STATUS] and "not a readable image" in out[STATUS]
    assert "huge.jpg" in out[STATUS] and "too large" in out[STATUS]
    assert image_paths[2].name in [img.original_name for img in app.service.ws.list_images()]


def test_only_bad_files_give_an_error_not_a_crash(app, tmp_path):
    client = connect(app, tmp_path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)  # truncated PNG
    out = client.predict([handle_file(str(junk))], api_name="/upload")
    assert warned(out[STATUS], "No image was added") and "junk.png" in out[STATUS]
    assert warned(client.predict([], api_name="/upload")[STATUS], "No images given")
    assert warned(client.predict([], api_name="/add_samples")[STATUS], "Pick one or more sample")


def test_uploads_over_the_size_limit_are_refused(app, tmp_path):
    client = connect(app, tmp_path)
    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2 * 2**20
    with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):
        client.predict([handle_file(str(big))], api_name="/upload")
    assert client.predict(api_name="/load")[STATUS]  # still serving


def test_export_of_an_empty_workspace(app_factory, tmp_path):
    empty = app_factory()
    client = connect(empty, tmp_path)
    assert warned(client.predict(False, "rle", api_name="/export_zip")[1], "Nothing to export")
    assert warned(client.predict("dataset", False, "rle", api_name="/export_folder"), "Nothing to export")
    assert warned(client.predict(api_name="/results_json")[1], "no images")
    assert warned(client.predict(api_name="/segment_all")[STATUS], "No images to segment")
    assert warned(client.predict(api_name="/next_image")[STATUS], "has no images")


def test_paths_from_requests_stay_inside_the_workspace(app, tmp_path, image_paths):
    app.service.images.add_files(image_paths[:1])
    client = connect(app, tmp_path)
    message = client.predict("../../../../tmp/evil", False, "rle", api_name="/export_folder")
    exports = app.service.ws.root / "exports"
    assert f"{exports}/evil" in message and not Path("/tmp/evil/annotations").exists()
    assert warned(client.predict("../..", False, "rle", api_name="/export_folder"), "Give the export folder a name")
    try:
        out = client.predict(["../../../etc/passwd"], api_name="/add_samples")
    except Exception as exc:  # gradio's own choices check
        assert "not in the list of choices" in str(exc)
    else:
        assert warned(out[STATUS], "Pick one or more sample")
    with pytest.raises(ServiceError, match="Pick one or more sample"):  # the service checks too
        app.service.images.add_samples(["../../../etc/passwd"])
    assert warned(client.predict("/etc/passwd", api_name="/go_to_image")[STATUS], "Unknown image '/etc/passwd'")


def test_corrupt_workspace_starts_with_a_message_and_recovers(app_factory, tmp_path, image_paths):
    ws_dir = tmp_path / "broken"
    ws_dir.mkdir()
    (ws_dir / DB_FILE_NAME).write_bytes(b"garbage, not SQLite " * 200)
    broken = app_factory(workspace=ws_dir)
    client = Client(broken.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False, download_files=str(tmp_path))
    loaded = client.predict(api_name="/load")
    banner = loaded[-2]["value"]
    assert "cannot be opened" in banner and "Recover workspace" in banner
    out = client.predict([handle_file(str(image_paths[0]))], api_name="/upload")
    assert warned(out[STATUS], "Recover workspace")
    out = client.predict(api_name="/recover_workspace")
    assert "damaged database was moved aside" in out[STATUS]
    assert list(ws_dir.glob(f"{DB_FILE_NAME}.corrupt-*"))
    out = client.predict([handle_file(str(image_paths[0]))], api_name="/upload")
    assert "Added 1 new image(s)" in out[STATUS]


def test_login_is_required_when_auth_is_set(app_factory, tmp_path):
    secured = app_factory(auth=("anna", "s3cret"))
    with pytest.raises(Exception):
        Client(secured.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False).predict(api_name="/load")
    client = Client(secured.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False, auth=("anna", "s3cret"),
                    download_files=str(tmp_path))
    assert client.predict(api_name="/load")


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=scaled(120))


def test_cli_without_the_default_model_exits_with_a_clear_message(tmp_path):
    from app.service import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():
        pytest.skip("the default model is present")
    result = run_cli("--workspace", str(tmp_path / "ws"))
    assert result.returncode != 0
    assert "default model" in result.stderr and "--weights" in result.stderr


def run_here(*args: str) -> subprocess.CompletedProcess:
    """`python -m app <args>` in this process, as a subprocess would end (SystemExit("error: ...") prints its
    message and exits 1); the server must not start."""
    import contextlib
    import io

    import app.__main__ as app_main

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err):
        patch.setattr(app_main, "launch", lambda *a, **k: pytest.fail(f"the app started with {args}"))
        try:
            code = app_main.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


@pytest.mark.slow
def test_cli_rejects_bad_arguments_clearly(tmp_path):
    result = run_here("--weights", str(tmp_path / "nope.pth"))
    assert result.returncode != 0 and "nope.pth: no such file" in result.stderr
    result = run_here("--auth", "no-colon", "--weights", str(tmp_path / "x.pth"))
    assert result.returncode != 0 and "user:password" in result.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    # checked before the model loads: one line each, no traceback
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, expected in ((["--port", "70000"], "TCP port"), (["--port", "x"], "integer"),
                           (["--workspace", str(afile)], "not a folder"), (["--device", "cuda:7"], "--device"),
                           (["--samples", str(tmp_path / "none")], "--samples")):
        result = run_here("--weights", str(bad), *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and expected in lines[0], (args, result.stderr)
        assert "cannot load the model" not in result.stderr and "Traceback" not in result.stderr
    # end to end, as a user starts it (the checks above ran in this process): a model that cannot load
    result = run_cli("--weights", str(bad), "--workspace", str(tmp_path / "ws"))
    assert result.returncode != 0 and "cannot load the model" in result.stderr
