"""Two people in two browser contexts (Chromium): the presence warning, take over, and another's
change appearing within a few seconds without losing the viewer's selection (issue 12)."""
from __future__ import annotations

import re

import pytest

from app.team.accounts import Account, Accounts, hash_password
from app.team.presence import DEFAULT_TTL
from browserkit import (BROWSER_MARKS, ROWS, new_page, playwright_or_skip, readme_screenshot, screenshot_on_failure,
                        wait_status, wait_text)
from testutils import scaled, scaled_ms

pytestmark = BROWSER_MARKS

sync_api = playwright_or_skip()

PASSWORD = "team-password"


@pytest.fixture(scope="module")
def app(app_factory, image_paths):
    secret = hash_password(PASSWORD)
    running = app_factory(auth=Accounts({"anna": Account("anna", "annotator", secret),
                                         "bob": Account("bob", "annotator", secret)}))
    running.service.images.add_files(image_paths[:1])
    running.service.presence.ttl = scaled(DEFAULT_TTL)  # a page's poll that a busy machine delays keeps its place
    return running


def person(browser, name: str, url: str):
    context, page = new_page(browser, timeout_s=60)
    page.goto(url)
    page.locator("input[type=password]").wait_for()
    page.locator("input:not([type=password])").first.fill(name)
    page.locator("input[type=password]").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("login", re.I)).click()
    page.wait_for_selector("#info")
    wait_text(page, "#info", f"you: {name}")
    return context, page


def select_row(page, instance_id: int) -> None:
    page.locator(ROWS).filter(has_text=re.compile(rf"^\s*{instance_id}\b")).first.click()
    page.wait_for_function("id => document.querySelector('#selected input').value == String(id)", arg=instance_id)


def test_two_people_see_who_edits_take_over_and_changes_appear(app, browser):
    ws = app.service.ws
    image_id = ws.list_images()[0].id
    first, second = ws.instances(image_id)[:2]
    url = f"{app.url}?image={image_id}"
    anna_context, anna = person(browser, "anna", url)
    bob_context, bob = person(browser, "bob", url)
    try:
        with screenshot_on_failure(anna, "team-anna"), screenshot_on_failure(bob, "team-bob"):
            select_row(anna, first.id)
            anna.locator("#hide").click()  # anna's first edit makes her the image's editor
            wait_status(anna, f"Instance #{first.id} hidden")
            select_row(bob, second.id)  # bob looks at another instance; the poll tells him anna edits
            wait_text(bob, "#info", "anna is editing this image", timeout=15_000)
            bob.locator("#delete").click()  # read-only: refused, nothing changed
            wait_status(bob, "anna is editing this image")
            assert not ws.get_instance(second.id).deleted
            readme_screenshot(bob, "team-presence.png")
            # anna deletes an instance: bob's page shows it within a few seconds, his selection kept
            select_row(anna, first.id)
            anna.locator("#delete").click()
            wait_status(anna, f"Deleted instance #{first.id}")
            bob.wait_for_function("id => ![...document.querySelectorAll('#instances div.virtual-row')].some("
                                  "r => r.innerText.trim().split(/\\s+/)[0] == String(id))", arg=first.id,
                                  timeout=scaled_ms(15))
            assert bob.locator("#selected input").input_value() == str(second.id)
            # bob takes over: his edit goes through; anna's page then says bob edits
            bob.locator("#take-over").click()
            wait_status(bob, "You edit this image now; anna views it read-only")
            bob.locator("#hide").click()
            wait_status(bob, f"Instance #{second.id} hidden")
            assert ws.get_instance(second.id).hidden and ws.get_instance(second.id).updated_by == "bob"
            wait_text(anna, "#info", "bob is editing this image", timeout=15_000)
            readme_screenshot(anna, "team-taken-over.png")
    finally:
        anna_context.close()
        bob_context.close()
