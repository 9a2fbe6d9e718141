"""`python -m app` with the bundled default model, in headless Chromium (Playwright).

The app is started exactly as a user starts it: ``python -m app --workspace TMP --port PORT`` as a
subprocess (no --weights: the bundled assets/default_model/model.pth, the bundled samples), polled
until it serves, then driven in the browser:

* test_bundled_sample_is_segmented: add a bundled sample from the "Bundled samples" control and
  find real fruit instances (>= 5 rows of date / fig / hazelnut) and the overlay picture.
* test_readme_screenshots: the README's views with the real model: segment (a fruit selected),
  explain (that fruit), correct (the gold-foil fig the model misses, painted in as a fig), export,
  retrain (a finished run, 8 iterations for the picture). The flow is checked on every run; the pictures are
  written to docs/screenshots/ only with CONDINST_SAVE_SCREENSHOTS=1:

      CONDINST_SAVE_SCREENSHOTS=1 python -m pytest tests/app/test_default_model_browser.py

On failure a full-page screenshot and the server's log go to test-artifacts/. Needs Debian's
Chromium at /usr/bin/chromium and the playwright package (never `playwright install`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from browserkit import (README_SCREENSHOTS, ROWS, SAVE_SCREENSHOTS, click_image, new_page, pick_option, playwright_or_skip,
                        show_click_view, wait_picture_loaded, wait_status, wait_text)
from testutils import scaled

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "assets" / "default_model" / "model.pth"
SAMPLES = REPO / "assets" / "samples"
SAMPLE = "fruits_nuts_9.jpg"
CLASSES = {"date", "fig", "hazelnut"}
ARTIFACTS = REPO / "test-artifacts"
START_TIMEOUT_S = 180
# image pixels along the upper gold-foil fig of fruits_nuts_9.jpg, which the model misses
GOLD_FIG_STROKE = [(272, 194), (270, 212), (276, 232), (284, 250), (293, 268), (308, 284)]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

sync_api = playwright_or_skip()
if not MODEL.is_file() or not (SAMPLES / SAMPLE).is_file():
    pytest.skip(f"the bundled default model {MODEL} or sample {SAMPLE} is missing", allow_module_level=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `python -m app` subprocess (its own process group) and its URL / log / workspace."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path, workspace: Path):
        self.proc, self.url, self.log, self.workspace = proc, url, log, workspace

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Poll the URL until it answers 200; fail with the server's log if it exits, or after `timeout` s on an
    idle machine (scaled)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`python -m app` exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=scaled(10)) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"`python -m app` did not serve {url} within {timeout} s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (retraining subprocesses included), then kill it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=scaled(15))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=scaled(15))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m app --workspace TMP --port PORT` on 127.0.0.1 with the bundled model."""
    folder = tmp_path_factory.mktemp("default-app")
    workspace, log = folder / "workspace", folder / "server.log"
    port = free_port()
    # one torch thread (2-core machines), no analytics; everything else as a user's environment
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "--workspace", str(workspace), "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(proc, url, log, START_TIMEOUT_S)
        yield Server(proc, url, log, workspace)
    finally:
        stop(proc)


@pytest.fixture
def page(browser):
    context, page = new_page(browser, height=1000, timeout_s=60, accept_downloads=True)
    yield page
    context.close()


@contextlib.contextmanager
def on_failure(page, server: Server, name: str):
    """Keep a full-page screenshot and the server's log in test-artifacts/ if the block fails."""
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        stamp = int(time.time())
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / f"{name}-{stamp}.png"), full_page=True)
        with contextlib.suppress(Exception):
            shutil.copyfile(server.log, ARTIFACTS / f"{name}-{stamp}-server.log")
        raise


def keep_screenshot(page, name: str) -> None:
    """A full-page README screenshot in docs/screenshots/ (only with CONDINST_SAVE_SCREENSHOTS=1)."""
    if not SAVE_SCREENSHOTS:
        return
    README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 0)  # no hover highlight
    page.wait_for_timeout(800)  # fade-in animations settle
    page.screenshot(path=str(README_SCREENSHOTS / f"{name}.png"), full_page=True)


# ------------------------------------------------------------------ page helpers

def add_sample(page, name: str) -> None:
    """Pick a bundled sample in the "Bundled samples" dropdown and press "Add samples"."""
    pick_option(page, "#samples", name)
    page.keyboard.press("Escape")
    page.locator("#add-samples").click()


def table_rows(page) -> list[dict]:
    """The instance table as dicts (id, class, score, ...)."""
    page.locator(ROWS).first.wait_for(state="visible")
    rows = []
    for row in page.locator(ROWS).all():
        cells = [row.locator(f"[data-col='{k}']").inner_text().strip() for k in range(4)]
        rows.append({"id": int(cells[0]), "class": cells[1], "score": float(cells[2]) if cells[2] else None,
                     "area": float(cells[3])})  # no score: a user-made instance
    return rows


def overlay_visible(page, selector: str = "#main-image img") -> bool:
    if selector.startswith("#main-image"):
        show_click_view(page)
    img = page.locator(selector)
    img.wait_for(state="visible")
    wait_picture_loaded(page, selector)  # visible is not loaded: the tab's event sends the picture, then it loads
    width, height, complete = img.evaluate("el => [el.naturalWidth, el.naturalHeight, el.complete]")
    box = img.bounding_box()
    return complete and width > 0 and height > 0 and box is not None and box["width"] > 100


def open_app(page, server: Server) -> None:
    """Open the app and wait until the page's load event has filled it in."""
    page.goto(server.url)
    page.wait_for_selector("#samples")
    wait_text(page, "#model-info", "model.pth")
    page.wait_for_function("() => { const e = document.querySelector('#info'); "  # the page's load event is done
                           "return e && /image \\d+ of|No image yet/.test(e.innerText); }")


def open_with_sample(page, server: Server, name: str) -> list[dict]:
    """Open the app; add the sample unless the workspace has it; the instance table's rows."""
    open_app(page, server)
    if "image 1 of" not in page.locator("#info").inner_text():
        add_sample(page, name)
        wait_status(page, "Added 1 new image", timeout=120_000)
    wait_text(page, "#info", "image 1 of 1")
    return table_rows(page)


# ------------------------------------------------------------------ tests

def test_bundled_sample_is_segmented(server, page):
    """The default `python -m app` segments a bundled sample into fruit instances."""
    with on_failure(page, server, "default-model-sample"):
        open_app(page, server)
        assert "No image yet" in page.locator("#info").inner_text()
        for fruit in CLASSES:
            wait_text(page, "#model-info", fruit)
        add_sample(page, SAMPLE)
        wait_status(page, "Added 1 new image", timeout=120_000)
        wait_text(page, "#info", "image 1 of 1")
        rows = table_rows(page)
        assert len(rows) >= 5, rows
        assert {row["class"] for row in rows} <= CLASSES, rows
        assert all(row["score"] is not None and 0 < row["score"] <= 1 and row["area"] > 0 for row in rows), rows
        assert overlay_visible(page)


def test_readme_screenshots(server, page):
    """The README's views with the real model (saved only with CONDINST_SAVE_SCREENSHOTS=1)."""
    from app.service import Service

    with on_failure(page, server, "default-model-screenshots"):
        rows = open_with_sample(page, server, SAMPLE)
        assert len(rows) >= 5 and {row["class"] for row in rows} <= CLASSES, rows

        # segment: the overlay with a confident fruit selected from the table
        best = max(range(len(rows)), key=lambda k: rows[k]["score"] or 0)
        page.locator(f"#instances [data-testid='cell-{best}-1']").click()
        chosen = rows[best]["id"]
        wait_status(page, f"Selected instance #{chosen}.")
        page.locator("#info").click()  # the table cell loses its focus frame
        assert overlay_visible(page)
        keep_screenshot(page, "segment")

        # explain: the filters, coordinate maps, channels and mask probability of that fruit
        page.get_by_role("tab", name="Explain").click()
        wait_text(page, "#explain-text", f"Instance #{chosen}")
        wait_text(page, "#explain-text", "FPN level")
        for name in ("image", "coord-x", "coord-y", "features", "filters", "probability"):
            page.locator(f"#explain-{name} img").wait_for(state="visible")
        keep_screenshot(page, "explain")

        # correct: paint the gold-foil fig the model missed (a brush stroke of "Paint new" + joined
        # clicks), as a fig, and mark the image reviewed
        page.get_by_role("tab", name="Segment & correct").click()
        page.locator("#brush-size input[type=number]").fill("44")
        page.locator("#brush-size input[type=number]").press("Enter")
        pick_option(page, "#new-class", "fig (2)")
        page.locator("#tool").get_by_label("Paint new", exact=True).check()
        stroke = GOLD_FIG_STROKE
        click_image(page, "#main-image img", *stroke[0])
        wait_status(page, "keep clicking with the brush")
        painted = int(page.locator("#selected input").input_value())
        page.locator("#join input").check()
        for point in stroke[1:]:
            before = page.locator("#main-image img").get_attribute("src")
            click_image(page, "#main-image img", *point)
            page.wait_for_function("old => { const e = document.querySelector('#main-image img'); "
                                   "return e && e.getAttribute('src') !== old; }", arg=before)
            wait_status(page, f"Painted instance #{painted}.")
        page.locator("#reviewed input").check()
        wait_status(page, "reviewed; its score threshold is frozen")
        wait_text(page, "#info", f"selected #{painted}")
        assert page.locator("#selected-class input").input_value() == "fig (2)"
        page.locator("#info").click()
        keep_screenshot(page, "correct")

        # export: a COCO zip of the workspace
        page.get_by_role("tab", name="Export").click()
        page.locator("#export-zip").click()
        wait_status(page, "Exported coco-")
        page.locator("#export-file a").first.wait_for(state="visible")
        keep_screenshot(page, "export")

        # retrain: a finished fine-tuning run with AP before / after (8 iterations for the README's picture)
        page.get_by_role("tab", name="Retrain").click()
        if not Service.retrain_available():
            keep_screenshot(page, "retrain")
            return
        page.locator("#retrain-iterations input").fill("8" if SAVE_SCREENSHOTS else "2")  # the README shows 8
        page.locator("#retrain-batch input").fill("1")
        page.locator("#retrain-start").click()
        wait_text(page, "#retrain-message", "Started fine-tuning")
        wait_text(page, "#retrain-state", "done", timeout=300_000)
        assert "box AP" in page.locator("#retrain-ap").inner_text()
        keep_screenshot(page, "retrain")
