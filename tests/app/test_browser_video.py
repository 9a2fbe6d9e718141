"""A video in the page (headless Chromium, Playwright): upload a generated mp4, find it as ONE item of
the image list, move the frame slider and the `.` key through its frames with the instance list
showing track ids, and fix a track's class for all its frames from the track panel.

Needs Debian's Chromium at /usr/bin/chromium and the playwright package (never `playwright install`).
"""
from __future__ import annotations

import re

import pytest

import videokit
from browserkit import BROWSER_MARKS, playwright_or_skip, screenshot_on_failure, wait_status, wait_text

pytestmark = [*BROWSER_MARKS, pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="fruits_nuts photos not found")]
playwright_or_skip()


def shown_frame(page) -> int:
    text = page.locator("#video-header").inner_text()
    return int(re.search(r"frame (\d+) of", text).group(1))


def test_upload_a_video_step_through_frames_and_fix_a_track_class(app_factory, page, crossing_mp4):
    app = app_factory()
    ws = app.service.ws
    with screenshot_on_failure(page, "browser-video"):
        page.goto(app.url)
        page.wait_for_selector("#upload")
        page.locator("#upload input[type=file]").set_input_files([str(crossing_mp4)])
        wait_status(page, "Added video sequence 1: 8 frames")
        wait_text(page, "#video-header", "frame 0 of 0-7")
        assert "crossing.mp4 (video, 8 frames)" in page.locator("#image-choice input").input_value()
        frames = app.service.sequences.frame_ids(1)

        # drag the frame slider's thumb to about 70 % of its track: that frame opens
        track = page.locator("#frame-slider input[type=range]")
        track.scroll_into_view_if_needed()
        box = track.bounding_box()
        page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
        page.wait_for_function("() => !/frame 0 of/.test(document.querySelector('#video-header').innerText)")
        index = shown_frame(page)
        assert 4 <= index <= 6 and track.evaluate("e => e.value") == str(index)
        wait_text(page, "#info", f"frame {index} ")
        # the instance list shows the frame's instances with their track ids
        tracked = {i.id: i.track_id for i in ws.instances(frames[index]) if i.track_id is not None}
        assert tracked
        ids = page.locator("#instances [data-col='0']").all_inner_texts()
        tracks = page.locator("#instances [data-col='7']").all_inner_texts()
        shown = {int(i): t.strip() for i, t in zip(ids, tracks) if i.strip().isdigit()}
        assert {i: str(t) for i, t in tracked.items() if i in shown} == {i: shown[i] for i in tracked if i in shown}
        assert any(shown.values())

        # the `.` key: the next frame (when there is one), the `,` key back
        page.locator("#video-header").click()
        page.keyboard.press("," if index == 7 else ".")
        expected = index - 1 if index == 7 else index + 1
        wait_text(page, "#video-header", f"frame {expected} of")
        index = expected

        # fix a track's class once for all its frames
        summaries = app.service.tracks.tracks(1)
        chosen = max((t for t in summaries if index in t.frames), key=lambda t: len(t.frames))
        names = {c.id: c.name for c in ws.categories()}
        target = next(c for c in ws.categories() if c.id != chosen.category_id)
        page.locator("#track-id input").fill(str(chosen.id))
        page.locator("#track-class input").click()
        page.get_by_role("option", name=f"{target.name} ({target.id})").click()
        page.locator("#track-set-class").click()
        wait_status(page, f"Track {chosen.id}: class set on")
        members = [i for f in frames for i in ws.instances(f) if i.track_id == chosen.id]
        assert len(members) == len(chosen.frames) and {i.category_id for i in members} == {target.id}
        wait_text(page, "#tracks", names[target.id])
        # one undo on this frame takes the whole change back
        page.locator("#undo").click()
        wait_text(page, "#status", "Undid")
        members = [i for f in frames for i in ws.instances(f) if i.track_id == chosen.id]
        assert {i.category_id for i in members} != {target.id}
        # ... and the track panel follows
        page.wait_for_function("([id, name]) => { const ids = [...document.querySelectorAll('#tracks [data-col=\"0\"]')];"
                               " const row = ids.findIndex(e => e.innerText.trim() === id);"
                               " const names = [...document.querySelectorAll('#tracks [data-col=\"1\"]')];"
                               " return row >= 0 && names[row] && names[row].innerText.trim() !== name; }",
                               arg=[str(chosen.id), target.name])
