"""The video panel through the canvas's edit channel (headless Chromium, Playwright): "Frame >" and a frame
number typed + Enter send one `frame` edit and show the new frame (its picture prefetched while the previous one
was shown); a click on a track row selects that track's instance on the canvas.

Needs Debian's Chromium at /usr/bin/chromium and the playwright package (never `playwright install`).
"""
from __future__ import annotations

import pytest

import videokit
from app.web.edit_channel import EditChannel
from browserkit import BROWSER_MARKS, open_editor, playwright_or_skip, screenshot_on_failure, show_click_view, wait_text
from testutils import scaled

pytestmark = [*BROWSER_MARKS, pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="fruits_nuts photos not found")]
playwright_or_skip()


@pytest.fixture(scope="module")
def app(app_factory, crossing_mp4):
    running = app_factory()
    running.service.images.add_files([crossing_mp4])
    return running


def shown(page, image_id: int) -> None:
    page.wait_for_function("id => { const s = window.condinstEditor.state; return s.scene.image.id === id && "
                           "s.img && s.img.complete; }", arg=image_id)


def test_frame_steps_and_a_typed_frame_go_through_the_channel(app, page, monkeypatch):
    frames = app.service.sequences.frame_ids(1)
    calls, edit = [], EditChannel.edit

    def counted(self, payload, request):
        calls.append(payload.get("action") if isinstance(payload, dict) else None)
        return edit(self, payload, request)
    monkeypatch.setattr(EditChannel, "edit", counted)
    with screenshot_on_failure(page, "video-channel-frames"):
        open_editor(page, app.url, frames[0])
        wait_text(page, "#video-header", "frame 0 of 0-7")
        # the next frame's picture is fetched while frame 0 is shown
        page.wait_for_function("id => window.condinstEditor.state.pictures.has(id)", arg=frames[1])
        calls.clear()
        page.locator("#next-frame").click()
        shown(page, frames[1])
        assert calls == ["frame"] or calls[:2] == ["frame", "prefetch"]  # one edit, no Gradio event
        assert page.evaluate("() => window.condinstEditor.state.scene.image.src") is None  # the prefetched picture (no src sent)
        wait_text(page, "#video-header", "frame 1 of")  # the panel follows
        # a frame number typed into the slider's field + Enter
        # (the panel is refreshed once after a step, for the image and its instance list together: done first)
        page.wait_for_function("() => !document.querySelector('#video-panel .pending, #tracks .pending')")
        box = page.locator("#frame-slider input[type=number]")
        box.fill("5")
        page.wait_for_function("id => window.condinstEditor.state.pictures.has(id)", arg=frames[2])  # frame 1's prefetch
        calls.clear()
        box.press("Enter")
        shown(page, frames[5])
        assert calls[0] == "frame"
        wait_text(page, "#video-header", "frame 5 of")
        assert page.locator("#frame-slider input[type=range]").evaluate("e => e.value") == "5"
        page.keyboard.press("Escape")
        page.locator("#video-header").click()  # the field loses the focus: nothing is sent again
        page.keyboard.press(",")  # the previous frame, by its key
        shown(page, frames[4])
        wait_text(page, "#video-header", "frame 4 of")
        assert calls.count("frame") == 2


def test_each_frame_step_refreshes_the_video_panel_once(app, page, monkeypatch):
    import queue

    import app.web.video_ui as video_ui

    frames = app.service.sequences.frame_ids(1)
    refreshes, shown_already = queue.Queue(), video_ui.shown_already

    def recorded(header, tracks, panel):  # each run of the panel's refresh: was it sent to the page?
        skipped = shown_already(header, tracks, panel)
        refreshes.put((not skipped, panel[1]))
        return skipped
    monkeypatch.setattr(video_ui, "shown_already", recorded)
    with screenshot_on_failure(page, "video-channel-one-refresh"):
        open_editor(page, app.url, frames[0])
        wait_text(page, "#video-header", "frame 0 of 0-7")
        page.wait_for_function("() => !document.querySelector('#video-panel .pending, #tracks .pending')")
        while not refreshes.empty():
            refreshes.get()
        for step in (1, 2, 3):
            page.locator("#next-frame").click()
            wait_text(page, "#video-header", f"frame {step} of")
            page.wait_for_function("() => !document.querySelector('#video-panel .pending, #tracks .pending')")
        page.locator("#video-header").click()
        sent = []
        while not refreshes.empty():
            sent.append(refreshes.get())
        sent_headers = [header for was_sent, header in sent if was_sent]  # runs that found it shown are not sent
        assert len(sent_headers) == 3, sent
        assert all(f"frame **{k}**" in header for k, header in zip((1, 2, 3), sent_headers)), sent
        print(f"panel refresh runs over 3 frame steps: {len(sent)}, sent: {len(sent_headers)}")


def test_a_frame_typed_in_the_click_view_shows_that_frame(app, page):
    frames = app.service.sequences.frame_ids(1)
    with screenshot_on_failure(page, "video-channel-click-view-typed"):
        open_editor(page, app.url, frames[0])
        wait_text(page, "#video-header", "frame 0 of 0-7")
        show_click_view(page)
        page.locator("#main-image img").wait_for()
        before = page.locator("#main-image img").get_attribute("src")
        page.wait_for_function("() => !document.querySelector('#video-panel .pending, #tracks .pending')")
        box = page.locator("#frame-slider input[type=number]")
        box.fill("3")
        box.press("Enter")
        wait_text(page, "#video-header", "frame 3 of")
        page.wait_for_function("src => { const i = document.querySelector('#main-image img'); "
                               "return i && i.src && i.getAttribute('src') !== src; }", arg=before)
        assert page.locator("#frame-slider input[type=range]").evaluate("e => e.value") == "3"


def test_a_track_row_click_selects_its_instance(app, page):
    ws = app.service.ws
    frames = app.service.sequences.frame_ids(1)
    tracked = [i for i in ws.instances(frames[0]) if i.track_id is not None]
    assert tracked
    target = tracked[-1]
    with screenshot_on_failure(page, "video-channel-track-row"):
        open_editor(page, app.url, frames[0])
        wait_text(page, "#tracks", str(target.track_id))
        page.evaluate("() => window.condinstEditor.send({action: 'select', id: null})")
        page.wait_for_function("() => window.condinstEditor.state.scene.selected === null")
        cell = page.locator("#tracks [data-col='1']").nth(
            [t.strip() for t in page.locator("#tracks [data-col='0']").all_inner_texts()].index(str(target.track_id)))
        cell.click()
        page.wait_for_function("id => window.condinstEditor.state.scene.selected === id", arg=target.id)
        # Gradio's select event still fills the track field; it travels apart from the channel, so it may land later
        page.wait_for_function("v => document.querySelector('#track-id input').value === v", arg=str(target.track_id))


def test_accept_is_off_while_the_propagation_preview_computes(app, page, monkeypatch):
    import threading

    ws = app.service.ws
    frames = app.service.sequences.frame_ids(1)
    target = next(i for i in ws.instances(frames[0]) if i.track_id is not None)
    entered, release, preview = threading.Event(), threading.Event(), app.service.propagation.preview

    def held(view, num_frames):  # the preview computes until the test has looked at the buttons
        entered.set()
        release.wait(scaled(120))
        return preview(view, num_frames)
    monkeypatch.setattr(app.service.propagation, "preview", held)
    with screenshot_on_failure(page, "video-channel-accept-off"):
        open_editor(page, app.url, frames[0])
        page.evaluate("id => window.condinstEditor.send({action: 'select', id})", target.id)
        page.wait_for_function("id => window.condinstEditor.state.scene.selected === id", arg=target.id)
        page.locator("#propagate-frames input").fill("2")
        page.locator("#propagate").click()
        try:
            assert entered.wait(scaled(120))
            page.wait_for_function("() => document.querySelector('#propagate-accept').disabled && "
                                   "document.querySelector('#propagate-discard').disabled")
        finally:
            release.set()
        page.wait_for_function("() => !document.querySelector('#propagate-accept').disabled")
        page.locator("#propagation-preview .propagation-strip").wait_for()
