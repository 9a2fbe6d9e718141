"""Page helpers shared by the browser tests (Playwright driving Debian's Chromium)."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from bench.editor_latency import CANVAS_SETTLED_JS
from testutils import scaled_ms

CHROMIUM = Path("/usr/bin/chromium")
# Headless and offline: without the networking flags Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROWS = "#instances div.virtual-row"
# The README's pictures in docs/screenshots/ are retaken only on request: a plain test run leaves them alone.
README_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SAVE_SCREENSHOTS = os.environ.get("CONDINST_SAVE_SCREENSHOTS", "") not in ("", "0")
# Marks of the Playwright test modules (Gradio's and numpy's deprecation noise is not ours).
BROWSER_MARKS = [pytest.mark.browser, pytest.mark.slow,
                 pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
                 pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
                 pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def readme_screenshot(page, name: str, **options) -> None:
    """``docs/screenshots/<name>`` from the page's top, only with CONDINST_SAVE_SCREENSHOTS=1."""
    if not SAVE_SCREENSHOTS:
        return
    README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(README_SCREENSHOTS / name), **options)


def playwright_or_skip():
    """Playwright's sync API, or skip the calling test module (or test) without Playwright or Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)
    return sync_api


def show_click_view(page) -> None:
    """Open the annotate view's "Click view" tab (the picture with click tools; the canvas editor is the default)."""
    tab = page.get_by_role("tab", name="Click view")
    if tab.count() and tab.get_attribute("aria-selected") != "true":
        tab.click()


def click_image(page, selector: str, x: float, y: float) -> None:
    """Click image pixel (x, y) of an <img> shown with object-fit: scale-down."""
    if selector.startswith("#main-image"):
        show_click_view(page)
    img = page.locator(selector)
    img.wait_for(state="visible")
    wait_picture_loaded(page, selector)  # its natural size (and the box it is fitted into) are those of the picture
    img.scroll_into_view_if_needed()  # as a person scrolls to the picture before clicking it
    box = img.bounding_box()
    natural_w, natural_h = img.evaluate("el => [el.naturalWidth, el.naturalHeight]")
    scale = min(1.0, box["width"] / natural_w, box["height"] / natural_h)
    left = box["x"] + (box["width"] - natural_w * scale) / 2
    top = box["y"] + (box["height"] - natural_h * scale) / 2
    page.mouse.click(left + (x + 0.5) * scale, top + (y + 0.5) * scale)


def wait_picture_loaded(page, selector: str) -> None:
    """Wait until the <img> matching `selector` has loaded its picture (visible is not loaded: before that its
    natural size is 0, or the previous picture's)."""
    page.wait_for_function("sel => { const e = document.querySelector(sel); "
                           "return e && e.complete && e.naturalWidth > 0; }", arg=selector)


def wait_text(page, selector: str, text: str, timeout: float = 60_000) -> None:
    """Wait until the element matching `selector` shows `text`; `timeout`: ms on an idle machine (scaled by
    testutils.timeout_scale())."""
    page.wait_for_function("([sel, t]) => { const e = document.querySelector(sel); "
                           "return e && e.innerText.includes(t); }", arg=[selector, text],
                           timeout=scaled_ms(timeout / 1000))


def wait_status(page, text: str, timeout: float = 60_000) -> None:
    wait_text(page, "#status", text, timeout)


def new_page(browser, width: int = 1400, height: int = 900, timeout_s: float = 30, **context_options):
    """(context, page): a fresh browser context (own cookies and storage) and its page, whose actions wait at
    most `timeout_s` seconds on an idle machine (scaled)."""
    context = browser.new_context(viewport={"width": width, "height": height}, **context_options)
    page = context.new_page()
    page.set_default_timeout(scaled_ms(timeout_s))
    return context, page


def pick_option(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option).click()


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@contextlib.contextmanager
def screenshot_on_failure(page, name: str):
    """Save a full-page screenshot to test-artifacts/ if the block fails."""
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{int(time.time())}.png"), full_page=True)
        raise


# One Chromium per test process: started by the first browser test, closed by tests/conftest.py after the last
# browser test of a run of them (they are contiguous: tests/app/test_browser*.py, test_default_model_browser.py).
# Each test gets its own browser context. Playwright's sync API marks an asyncio loop as running in the main
# thread while it is open, so it must not stay open under the tests that follow.
_shared: list = []  # [the sync_playwright context manager, the Browser] while open


def shared_chromium(sync_api):
    """The process's Chromium, launched on first use (again after `close_shared_chromium`)."""
    if not _shared:
        manager = sync_api.sync_playwright()
        playwright = manager.__enter__()
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except BaseException:
            manager.__exit__(None, None, None)
            raise
        _shared.extend([manager, browser])
    return _shared[1]


def close_shared_chromium() -> None:
    if _shared:
        manager, browser = _shared
        _shared.clear()
        try:
            browser.close()
        finally:
            manager.__exit__(None, None, None)


# ---- the canvas editor ----
def open_editor(page, url: str, image_id: int) -> None:
    page.goto(f"{url}?image={image_id}")
    page.wait_for_function("id => window.condinstEditor && window.condinstEditor.state.img && "
                           "window.condinstEditor.state.img.complete && "
                           "window.condinstEditor.state.scene.image.id === id", arg=image_id)


def canvas_point(page, x: int, y: int) -> tuple[float, float]:
    """The page position of original-image pixel (x, y) on the editor's canvas, as the editor maps it once the
    canvas's place and view transform held still for 3 animation frames (the page refits the canvas when its side
    panels arrive, later on a loaded machine: a click placed from the transform before that lands elsewhere)."""
    page.evaluate(CANVAS_SETTLED_JS)
    box = page.locator("#editor canvas").bounding_box()
    s, ox, oy, k = page.evaluate("() => { const s = window.condinstEditor.state; const i = s.scene.image; "
                                 "return [s.s, s.ox, s.oy, i.pw / i.width]; }")
    return box["x"] + ox + (x + 0.5) * k * s, box["y"] + oy + (y + 0.5) * k * s


def interior(mask: np.ndarray) -> tuple[int, int]:
    """A pixel (x, y) of the mask: its middle pixel in row-major order."""
    ys, xs = np.nonzero(mask)
    k = len(xs) // 2
    return int(xs[k]), int(ys[k])
