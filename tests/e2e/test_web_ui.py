"""The web UI of a live `processor run --admin-port 0` with an admin token, on the real broker, in a real
headless Chromium (Debian's `chromium`, driven by Playwright through its `executable_path`: no browser
download). The invocations page lists rows and its filters narrow them, an invocation's journal shows
as a timeline (a waiting awakeable; a step that took three attempts in an invocation backing off after
two), the state page shows a key's state, the timers and partitions pages render, and a cancel
goes through the confirmation dialog: a wrong token is refused and produces nothing, the right one
cancels the invocation (checked through the JSON API).

With three instances, the UI opened on one finds an invocation backing off on another (through the
serving endpoint's forwarding: the browser asks that origin only), shows its journal, its error and
its key's state, kills it; after its instance stops and the partition moves, the list shows every
row once, from the partition's new owner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, Page, expect

from processor._engine.routing import partition_for_key
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
    # the row of a backing-off invocation carries its last attempt's error, and when it runs again
    expect(page.locator("#invocation-error")).to_contain_text("RuntimeError: payment service down")
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


# -- three instances, the UI opened on one of them ---------------------------------------------------

CLUSTER_PARTITIONS = 3


def test_the_web_ui_on_one_instance_finds_reads_and_kills_a_retrying_invocation_on_another_and_shows_no_stale_rows(
        kafka: Kafka, spawn: Spawner, browser: Browser) -> None:
    name = kafka.unique("uicluster")
    inp = kafka.create_topic(f"{name}-in", CLUSTER_PARTITIONS)
    out = kafka.create_topic(f"{name}-out", CLUSTER_PARTITIONS)
    env = {"ADMIN_APP": name, "ADMIN_INPUT": inp, "ADMIN_OUTPUT": out, "PROCESSOR_ADMIN_TOKEN": TOKEN}
    procs = {f"u{n}": spawn("tests.apps.admin:app", env, instance_id=f"u{n}", state_dir=spawn.tmp / f"state-{n}",
                            args=["--admin-port", "0"]) for n in (1, 2, 3)}
    for proc in procs.values():
        proc.start()
    admins = {iid: Admin(proc) for iid, proc in procs.items()}
    serving = admins["u1"]

    def all_live() -> bool:
        d = serving.json("/api/instances")
        served = {i["instance_id"]: sorted(i["partitions"] or ()) for i in d["instances"]}
        return (d["source"] == "registry" and len(served) == 3 and d["owners"] is not None
                and sorted(p for ps in served.values() for p in ps) == list(range(CLUSTER_PARTITIONS))
                and all(served[iid] == sorted(int(p) for p, o in d["owners"].items() if o == iid) for iid in served))
    wait_until(all_live, 120, "three live instances serving partitions 0..2, listed by u1", interval=0.5)

    # a key whose partition another instance owns; it fails, its invocation backs off for ten minutes
    owners = serving.json("/api/instances")["owners"]
    key = next(k for k in (f"f{i}" for i in range(100))
               if owners[str(partition_for_key(k.encode(), CLUSTER_PARTITIONS))] != "u1")
    owner = owners[str(partition_for_key(key.encode(), CLUSTER_PARTITIONS))]
    kafka.produce(inp, [(f"k{i}".encode(), orjson.dumps({"key": f"k{i}", "id": f"e{i}"})) for i in range(6)]
                  + [(key.encode(), orjson.dumps({"key": key, "id": key, "fail": True}))])
    failing = _one(admins[owner], f"key={key}", lambda r: r["status"] == "backing_off" and r["attempt"] >= 2
                   and "payment service down" in (r["failure"] or ""))
    wait_until(lambda: len(kafka.drain(out)) == 6, 60, "six outputs")

    page = browser.new_page()
    page_errors: list[str] = []
    origins: set[str] = set()
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    # the state page asks each instance until one owns the key: the others' 404s are expected
    page.on("console", lambda m: page_errors.append(m.text) if m.type == "error" and "404" not in m.text else None)
    page.on("request", lambda r: origins.add("/".join(r.url.split("/")[:3])))
    try:
        _find_read_and_kill_on_another_instance(page, serving, admins[owner], failing, key, owner)
        assert page_errors == []
        assert origins == {serving.base}  # every instance reached through the one the page came from

        # its instance stops; its partitions move to the others: every row once, from its new owner
        assert procs[owner].stop() == 0
        survivors = sorted(set(procs) - {owner})
        seen: list[list[tuple[str, str, str]]] = []

        def moved() -> bool:
            seen[:] = [_ui_rows(page, f"{serving.base}/ui/#/invocations")]
            by_id = {r[0]: r for r in seen[0]}
            return (len(seen[0]) == len(by_id) == 7 and by_id[failing["id"]][1] != owner
                    and by_id[failing["id"]][2] == "failed")
        def settled() -> bool:
            """Each row shown by the instance the group has given its partition (a second rebalance
            may still move a partition after the first rows appear: then the page catches up)."""
            if not moved():
                return False
            listing = serving.json("/api/instances")
            assigned = {i["instance_id"]: set(i["assigned"]) for i in listing["instances"]}
            return sorted(assigned) == survivors and all(
                instance in survivors and admins[instance].json(f"/api/invocations/{inv_id}")["partition"]
                in assigned[instance] for inv_id, instance, _ in seen[0])
        wait_until(settled, 90, "the stopped instance's partitions served by the others, in the UI", interval=1.0)
        expect(page.locator("#instances")).to_contain_text("2 instance(s)")
        for inv_id, _, status in seen[0]:
            assert status == ("failed" if inv_id == failing["id"] else "completed"), (inv_id, status)
        expect(page.locator("#missing-partitions")).to_have_count(0)
    finally:
        page.close()
    for iid in survivors:
        assert procs[iid].stop() == 0


def _ui_rows(page: Page, url: str) -> list[tuple[str, str, str]]:
    """(id, instance, status) of the invocations page's rows, freshly loaded."""
    page.goto(url)
    page.reload()
    expect(page.locator("#invocation-count")).to_be_visible()
    rows = page.locator("#invocation-rows tbody tr")
    return [(rows.nth(i).get_attribute("data-id") or "", rows.nth(i).locator("td").nth(0).inner_text(),
             rows.nth(i).get_attribute("data-status") or "") for i in range(rows.count())]


def _find_read_and_kill_on_another_instance(page: Page, serving: Admin, owner_admin: Admin, failing: dict[str, Any],
                                            key: str, owner: str) -> None:
    # the list, on u1, shows the backing-off invocation on its owner, with its last error
    page.goto(f"{serving.base}/ui/#/invocations?status=backing_off")
    expect(page.locator("#instances")).to_contain_text("3 instance(s)")
    rows = page.locator("#invocation-rows tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", failing["id"])
    expect(rows.first.locator("td").nth(0)).to_have_text(owner)
    expect(rows.first.locator("td.why")).to_have_text("RuntimeError: payment service down")

    # its journal and its error
    rows.first.locator("a.inv").click()
    expect(page.locator("#invocation")).to_contain_text(f"{owner} / {failing['partition']}")
    expect(page.locator("#invocation-error")).to_contain_text("RuntimeError: payment service down")
    entries = page.locator("#timeline li.entry[data-seq]")
    expect(entries).to_have_count(4)
    assert [entries.nth(i).get_attribute("data-kind") for i in range(4)] == ["get", "set", "run", "run"]
    expect(page.locator("#timeline li[data-kind=run]").filter(has_text="reserve")).to_contain_text("3 attempts")
    expect(page.locator("#timeline li.k-end")).to_contain_text("backing_off")

    # its key's state, from the owner: what the owner's API says
    state = owner_admin.json(f"/api/state/acct/{key}")["state"]
    page.click("nav a[data-page=state]")
    page.fill("#s-object", "acct")
    page.fill("#s-key", key)
    page.click("#state-form button[type=submit]")
    expect(page.locator("#state")).to_contain_text(f"partition {failing['partition']} on {owner}, {len(state)} entr")
    expect(page.locator("#state-rows tbody tr")).to_have_count(len(state))
    for name, value in state.items():
        expect(page.locator(f"#state-rows tr[data-name={name}]")).to_contain_text(str(value))

    # killed with confirmation: the command goes through u1 to the owner, which applies it
    page.goto(f"{serving.base}/ui/#/invocation/{failing['id']}?instance={owner}")
    page.click("#actions button[data-action=kill]")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("No compensation runs")
    page.fill("#confirm-token", TOKEN)
    page.click("#confirm-yes")
    expect(page.locator("#confirm")).to_be_hidden()
    expect(page.locator("#action-note")).to_contain_text("kill requested")
    expect(page.locator("#invocation .badge").first).to_have_text("failed", timeout=30_000)
    row = owner_admin.json(f"/api/invocations/{failing['id']}")
    assert (row["status"], row["error_type"]) == ("failed", "Killed")
