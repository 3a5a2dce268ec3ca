"""The web UI of a live `processor run --admin-port 0` with an admin token, on the real broker, in a real
headless Chromium (Debian's `chromium`, driven by Playwright through its `executable_path`: no browser
download). The invocations page lists rows and its filters narrow them, an invocation's journal shows
as a timeline (a waiting awakeable; a step that took three attempts in an invocation backing off after
two), the state page shows a key's state, the timers and partitions pages render, and a cancel
goes through the confirmation dialog: a wrong token is refused and produces nothing, the right one
cancels the invocation (checked through the JSON API)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser_support import chromium
from tests.e2e.conftest import Spawner
from tests.e2e.test_admin import PARTITIONS, TOKEN, Admin, AdminApp
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def _one(admin: Admin, query: str, ready: Any) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def there() -> bool:
        rows = admin.json(f"/api/invocations?{query}")["invocations"]
        found[:] = [r for r in rows if ready(r)]
        return len(found) == 1
    wait_until(there, 60, f"one invocation for {query}")
    return found[0]


def test_web_ui_in_chromium_lists_filters_shows_journal_and_state_and_cancels_with_confirmation(
        kafka: Kafka, spawn: Spawner, browser: Browser) -> None:
    a = AdminApp(kafka, spawn, stall_s=60)  # the token from PROCESSOR_ADMIN_TOKEN, as --admin-token's default
    a.proc.start()
    admin = Admin(a.proc)
    wait_until(lambda: admin.request("/readyz")[0] == 200, 90, "/readyz to answer 200")
    a.produce([{"key": f"k{i}", "id": f"e{i}"} for i in range(3)]
              + [{"key": "w1", "id": "w1", "wait": True}, {"key": "f1", "id": "f1", "fail": True}])
    wait_until(lambda: len(admin.json("/api/invocations?status=completed")["invocations"]) == 3, 60,
               "three completed invocations")
    waiting = _one(admin, "key=w1", lambda r: r["status"] in ("running", "suspended") and admin.json(
        f"/api/invocations/{r['id']}")["journal"][-1]["kind"] == "awakeable")
    failing = _one(admin, "key=f1", lambda r: r["status"] == "backing_off" and r["attempt"] >= 2)

    page = browser.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("console", lambda m: page_errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
    try:
        _invocations_and_filters(page, admin, waiting["id"], failing["id"])
        _journal_timelines(page, admin, waiting["id"], failing["id"])
        _state_timers_partitions(page, admin, failing["id"])
        _cancel_with_confirmation(page, admin, a, waiting["id"])
        assert page_errors == []
    finally:
        page.close()
    assert a.proc.stop() == 0


def _invocations_and_filters(page: Page, admin: Admin, waiting: str, failing: str) -> None:
    page.goto(admin.base + "/")  # redirects to /ui/
    expect(page).to_have_url(admin.base + "/ui/")
    rows = page.locator("#invocation-rows tbody tr")
    expect(rows).to_have_count(5)
    expect(page.locator("#app-name")).to_have_text(admin.json("/api/instances")["app"])
    page.select_option("#f-status", "backing_off")
    page.click("#invocation-filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", failing)
    expect(rows.first.locator("td").nth(8)).to_have_text("2")  # attempts failed so far
    assert "status=backing_off" in page.url
    page.click("#f-clear")
    expect(rows).to_have_count(5)
    page.fill("#f-key", "w1")
    page.click("#invocation-filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", waiting)
    page.fill("#f-key", "")
    page.select_option("#f-status", "completed")
    page.click("#invocation-filters button[type=submit]")
    expect(rows).to_have_count(3)


def _journal_timelines(page: Page, admin: Admin, waiting: str, failing: str) -> None:
    page.goto(f"{admin.base}/ui/#/invocations?key=w1")
    page.locator("#invocation-rows a.inv").filter(has_text=waiting).click()
    entries = page.locator("#timeline li.entry[data-seq]")
    expect(entries).to_have_count(4)
    assert [entries.nth(i).get_attribute("data-kind") for i in range(4)] == ["get", "set", "run", "awakeable"]
    expect(entries.nth(2)).to_contain_text("noted w1")
    expect(entries.nth(3).locator(".badge")).to_have_text("waiting")
    expect(page.locator("#actions button[data-action]")).to_have_count(2)  # cancel and kill
    expect(page.locator("#invocation")).to_contain_text('"wait": true')

    page.goto(f"{admin.base}/ui/#/invocation/{failing}")
    entries = page.locator("#timeline li.entry[data-seq]")
    expect(entries).to_have_count(4)
    reserve = page.locator("#timeline li[data-kind=run]").filter(has_text="reserve")
    expect(reserve).to_contain_text("3 attempts")
    expect(reserve).to_contain_text("reserved f1")
    # the row of a backing-off invocation holds no error yet (the engine logs it): its retry shows
    expect(page.locator("#timeline li.k-end")).to_contain_text("backing_off")
    expect(page.locator("#timeline li.k-end")).to_contain_text("attempt 3 in")
    expect(page.locator("#actions button[data-action=retry]")).to_be_visible()


def _state_timers_partitions(page: Page, admin: Admin, failing: str) -> None:
    page.click("nav a[data-page=state]")
    page.fill("#s-object", "acct")
    page.fill("#s-key", "w1")
    page.click("#state-form button[type=submit]")
    expect(page.locator("#state-rows tr[data-name=n]")).to_contain_text("1")
    expect(page.locator("#state-rows tbody tr")).to_have_count(1)

    page.click("nav a[data-page=timers]")
    retry = page.locator("#timer-rows tbody tr[data-kind=invocation_retry]")
    expect(retry).to_have_count(1)
    expect(retry).to_contain_text(failing)

    page.click("nav a[data-page=partitions]")
    expect(page.locator("#partition-rows tbody tr[data-phase=active]")).to_have_count(PARTITIONS)
    expect(page.locator("#partition-summary")).to_contain_text(f"{PARTITIONS} of {PARTITIONS} partition(s)")


def _cancel_with_confirmation(page: Page, admin: Admin, a: AdminApp, waiting: str) -> None:
    page.goto(f"{admin.base}/ui/#/invocation/{waiting}")
    dialog = page.locator("#confirm")
    ends = a.inbox_ends()

    # backing out sends nothing
    page.click("#actions button[data-action=cancel]")
    expect(dialog).to_be_visible()
    page.click("#confirm-no")
    expect(dialog).to_be_hidden()

    # a wrong token is refused: the dialog stays open and says so, no command is produced
    page.click("#actions button[data-action=cancel]")
    expect(page.locator("#confirm-token")).to_be_visible()
    page.fill("#confirm-token", "not-the-token")
    page.click("#confirm-yes")
    expect(page.locator("#confirm-error")).to_contain_text("refused")
    expect(dialog).to_be_visible()
    assert a.inbox_ends() == ends
    assert admin.json(f"/api/invocations/{waiting}")["status"] in ("running", "suspended")

    page.fill("#confirm-token", TOKEN)
    page.click("#confirm-yes")
    expect(dialog).to_be_hidden()
    expect(page.locator("#action-note")).to_contain_text("cancel requested")
    expect(page.locator("#invocation .badge").first).to_have_text("failed", timeout=30_000)
    row = admin.json(f"/api/invocations/{waiting}")
    assert (row["status"], row["error_type"]) == ("failed", "Cancelled")
    assert admin.json("/api/state/acct/w1")["state"] == {"n": 1, "cancelled": "w1"}
    # the token is kept for this tab only, and never put in the address
    assert page.evaluate("sessionStorage.getItem('processor-admin-token')") == TOKEN
    assert TOKEN not in page.url
    expect(page.locator("#token-state")).to_have_text("token set for this tab")
