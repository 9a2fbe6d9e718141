"""Screenshots of the app as an annotator sees it, to look at by hand: the main view, a video frame, Explain and
Import & QA at 1280x720, 1400x1000 and 1920x1080, the key list (`?`) and an empty workspace at 1280x720, and the team
view (a second app with two accounts: bob's page while anna edits) at 1280x720 and 1920x1080 (bundled model, two
bundled samples and a generated 8-frame clip; JPEG files in OUT).

    python tools/layout_screenshots.py OUT [--port 7896]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from playwright.sync_api import sync_playwright  # noqa: E402

import videokit  # noqa: E402  (tests/videokit.py: the generated clip)
from app.__main__ import launch  # noqa: E402
from app.model.session import DEFAULT_WEIGHTS  # noqa: E402
from app.service import Service  # noqa: E402
from app.team.accounts import Account, Accounts, hash_password  # noqa: E402

SIZES = ((1280, 720), (1400, 1000), (1920, 1080))
CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium (make browser-deps)


def opened(page, url: str) -> None:
    """Load `url` and wait until the canvas shows its picture."""
    page.goto(url)
    page.wait_for_function("() => window.condinstEditor && window.condinstEditor.state.img && "
                           "window.condinstEditor.state.img.complete", timeout=120_000)
    page.wait_for_timeout(1500)  # let the side panels settle for the picture


def settled(page) -> None:
    """Wait until no Gradio progress text ("processing | 0.3s") and no pending (dimmed) output shows: the page's load
    chain and any event have answered (a shot taken earlier shows a spinner and a timer, or a dimmed component, on
    every output of the event still running)."""
    page.wait_for_function("() => ![...document.querySelectorAll('.progress-text, .pending, .translucent')]"
                           ".some(e => e.offsetParent)", timeout=120_000)


def shoot(page, path: Path) -> None:
    settled(page)
    page.screenshot(path=str(path), quality=80)
    print(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--port", type=int, default=7896)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        service = Service.create(Path(tmp) / "ws", DEFAULT_WEIGHTS)
        service.images.add_samples(service.images.sample_names()[:2])
        videokit.crossing_video(Path(tmp) / "clip", frames=8, mp4=True)
        service.images.add_files([next((Path(tmp) / "clip").rglob("*.mp4"))])
        demo = launch(service, "127.0.0.1", args.port, block=False)
        url = f"http://127.0.0.1:{args.port}/"
        first = service.ws.list_images()[0].id
        frame = next(i.id for i in service.ws.list_images() if i.sequence_id is not None)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                for width, height in SIZES:
                    size = f"{width}x{height}"
                    page = browser.new_page(viewport={"width": width, "height": height})
                    opened(page, f"{url}?image={first}")
                    shoot(page, args.out / f"main-{size}.jpg")
                    if width == 1280:
                        page.keyboard.press("?")
                        page.locator("#editor .ce-keys").wait_for(state="visible")
                        shoot(page, args.out / f"keys-{size}.jpg")
                        page.keyboard.press("Escape")
                    opened(page, f"{url}?image={frame}")
                    page.wait_for_selector("#video-header", state="visible")
                    shoot(page, args.out / f"video-{size}.jpg")
                    opened(page, f"{url}?image={first}")
                    biggest = max(service.ws.instances(first), key=lambda inst: inst.area)
                    page.locator("#instances [data-col='0']").filter(has_text=str(biggest.id)).first.click()
                    page.wait_for_function("id => document.querySelector('#selected input').value === String(id)",
                                           arg=biggest.id)
                    page.get_by_role("tab", name="Explain").click()
                    page.wait_for_selector("#explain-text h3")
                    page.wait_for_timeout(1500)
                    shoot(page, args.out / f"explain-{size}.jpg")
                    page.get_by_role("tab", name="Import & QA").click()
                    page.wait_for_timeout(1000)
                    shoot(page, args.out / f"import-qa-{size}.jpg")
                    page.close()
                browser.close()
        finally:
            demo.close()
            service.close()
        team_view(Path(tmp) / "team", args.out, args.port + 1)
        empty_view(Path(tmp) / "empty", args.out, args.port + 2)
    return 0


def team_view(workspace: Path, out: Path, port: int) -> None:
    """Two accounts on one app: anna hides an instance (she becomes the image's editor); bob's page is shot."""
    secret = hash_password("screenshots")
    service = Service.create(workspace, DEFAULT_WEIGHTS)
    service.images.add_samples(service.images.sample_names()[:1])
    demo = launch(service, "127.0.0.1", port, auth=Accounts({name: Account(name, "annotator", secret)
                                                              for name in ("anna", "bob")}), block=False)
    url = f"http://127.0.0.1:{port}/?image={service.ws.list_images()[0].id}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            pages = {}
            for name, (width, height) in (("anna", (1280, 720)), ("bob", (1280, 720)), ("bob-wide", (1920, 1080))):
                page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                page.goto(url)
                page.locator("input[type=password]").wait_for()
                page.locator("input:not([type=password])").first.fill(name.split("-")[0])
                page.locator("input[type=password]").fill("screenshots")
                page.get_by_role("button", name=re.compile("login", re.I)).click()
                page.wait_for_function("() => window.condinstEditor && window.condinstEditor.state.img && "
                                       "window.condinstEditor.state.img.complete", timeout=120_000)
                pages[name] = page
                if name == "anna":
                    first = service.ws.instances(service.ws.list_images()[0].id)[0]
                    page.locator("#instances [data-col='0']").filter(has_text=str(first.id)).first.click()
                    page.locator("#hide").click()
                    page.wait_for_function("() => document.body.innerText.includes('hidden')")
            for name in ("bob", "bob-wide"):
                pages[name].wait_for_function("() => document.querySelector('#info').innerText.includes('anna')",
                                              timeout=60_000)
                width, height = pages[name].viewport_size["width"], pages[name].viewport_size["height"]
                shoot(pages[name], out / f"team-{width}x{height}.jpg")
            browser.close()
    finally:
        demo.close()
        service.close()


def empty_view(workspace: Path, out: Path, port: int) -> None:
    """A new, empty workspace: what the canvas offers to add images, at 1280x720."""
    service = Service.create(workspace, DEFAULT_WEIGHTS)
    demo = launch(service, "127.0.0.1", port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#editor .ce-empty").wait_for(state="visible")
            shoot(page, out / "empty-1280x720.jpg")
            browser.close()
    finally:
        demo.close()
        service.close()


if __name__ == "__main__":
    sys.exit(main())
