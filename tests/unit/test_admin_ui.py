"""The web UI's files as the admin endpoint serves them, without a broker: the page and its modules
with their types and a policy that runs only the page's own scripts, no path out of the static
folder, and the access rule (the files load without a token, so the token can be typed; the API
they call still needs it beyond loopback), that one in Chromium too. tests/e2e/test_web_ui.py runs
the page against a live processor."""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from playwright.sync_api import expect

import processor as p
from processor._admin import peers, ui
from processor._admin.server import AdminConfig, AdminServer
from processor._cluster.discovery import CliError, Cluster
from processor._engine.engine import Engine
from tests.browser_support import chromium

TOKEN = "ui-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AdminServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()

    async def build() -> Engine:
        return Engine(p.App("ui-unit", partitions=2), bootstrap_servers="127.0.0.1:1", state_dir=tmp_path,
                      instance_id="i7")
    engine = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
    s = AdminServer.start(engine, AdminConfig(port=0, token=TOKEN, loop_timeout_s=0.5), loop)
    s.peers = peers.Peers(engine, discover=_no_kafka)
    try:
        yield s
    finally:
        s.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _no_kafka() -> Cluster:
    raise CliError("cannot reach Kafka at 127.0.0.1:1", 2)


def get(s: AdminServer, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_the_page_and_its_modules_are_served_with_their_types_and_a_strict_content_policy(
        server: AdminServer) -> None:
    status, headers, body = get(server, "/ui/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script type="module" src="app.js">' in body
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, _ = get(server, "/ui/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert get(server, "/ui/ui.css")[1]["content-type"].startswith("text/css")
    for path in ("/", "/ui"):
        status, headers, _ = get(server, path)
        assert (status, headers["location"]) == (302, "ui/")


def test_every_module_the_page_imports_is_shipped() -> None:
    names = set(ui._assets())
    for name in [n for n in names if n.endswith((".js", ".html"))]:
        text = ui.asset(name)[0].decode()  # type: ignore[index]
        for ref in re.findall(r'from "\./([^"]+)"|(?:src|href)="([^"#:]+)"', text):
            assert (ref[0] or ref[1]) in names, f"{name} refers to {ref} which is not in static/"


def test_no_path_leaves_the_static_folder(server: AdminServer) -> None:
    for path in ("/ui/../api/partitions", "/ui/%2e%2e%2fserver.py", "/ui/..%2f__init__.py", "/ui/nope.js",
                 "/ui/static/index.html", "/ui/index.html/x"):
        assert get(server, path)[0] == 404, path


def test_beyond_loopback_the_files_load_without_the_token_and_the_api_needs_it(server: AdminServer) -> None:
    server.config = replace(server.config, host="10.1.2.3")  # as if bound there
    assert get(server, "/ui/")[0] == 200
    assert get(server, "/ui/app.js")[0] == 200
    assert get(server, "/api/instances")[0] == 401
    status, _, body = get(server, "/api/instances", token=TOKEN)
    assert status == 200
    assert orjson.loads(body) == {
        "app": "ui-unit", "self": "i7", "source": "self", "partitions_total": None, "owners": None,
        "notes": ["only this instance is listed: cannot reach Kafka at 127.0.0.1:1"],
        "instances": [{"instance_id": "i7", "app": "ui-unit", "self": True, "path": ""}]}


def test_beyond_loopback_the_page_loads_in_chromium_and_reads_once_the_token_is_typed(server: AdminServer) -> None:
    server.config = replace(server.config, host="10.1.2.3")  # as if bound there
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/ui/#/partitions")
        expect(page.locator("#flash")).to_contain_text("set the admin token")
        page.fill("#token", TOKEN)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-state")).to_have_text("token set for this tab")
        expect(page.locator("#partition-summary")).to_contain_text("0 of 0 partition(s)")
        expect(page.locator("#instances")).to_contain_text("i7")
        expect(page.locator("#flash")).to_be_empty()
        assert TOKEN not in page.url
        page.click("#token-forget")
        page.click("nav a[data-page=timers]")
        expect(page.locator("#timers .error")).to_contain_text("i7: a bearer token is required")


def test_the_page_takes_each_partitions_rows_from_the_instance_the_group_assigned_it_to(server: AdminServer) -> None:
    # api.js's coverage, as the CLI's merge.coverage: a zombie's claim is set aside, a partition
    # assigned to nobody counts from its one claimant, one nobody answers for is missing
    script = """async () => {
      const { coverage } = await import("./api.js");
      const answer = (id, partitions) => ({ instance: { instance_id: id }, data: { partitions } });
      const c = coverage([answer("a", [0, 1]), answer("b", [1, 2]), answer("z", [4]),
                          { instance: { instance_id: "d" }, error: new Error("down") }],
                         { owners: { 0: "a", 1: "b", 3: "d" }, partitions_total: 5 });
      const p = coverage([answer("a", [{ partition: 0, phase: "active" }, { partition: 1, phase: "restoring" }])],
                         { owners: null, partitions_total: null });
      return { a: [0, 1, 2, 4].map((n) => c.accepts("a", n)), b: [1, 2].map((n) => c.accepts("b", n)),
               z: c.accepts("z", 4), missing: c.missing, notes: c.notes,
               partitions: [p.accepts("a", 0), p.accepts("a", 1)], none: p.missing };
    }"""
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/ui/")
        got = page.evaluate(script)
    assert got == {"a": [True, False, False, False], "b": [True, True], "z": True, "missing": [3],
                   "notes": ["partition 1: a still serves it, but the group assigned it to b; its rows are not shown"],
                   "partitions": [True, False], "none": []}
