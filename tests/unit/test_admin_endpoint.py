"""The admin endpoint without a broker: an engine that is built but not run, its event loop on a
thread of the test. Probes, auth, the loop-timeout 503 and the metrics exposition; the e2e test
(tests/e2e/test_admin.py) runs it against a live processor."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import processor as p
from processor._admin.server import AdminConfig, AdminServer
from processor._engine.commands import CommandKind
from processor._engine.engine import Engine
from processor._engine.health import Health
from processor._errors import ConfigurationError
from tests.http_support import request

TOKEN = "s3cret-token"


class Served:
    def __init__(self, engine: Engine, server: AdminServer, loop: asyncio.AbstractEventLoop) -> None:
        self.engine, self.server, self.loop = engine, server, loop
        self.sent: list[tuple[int, str, CommandKind]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def request(self, path: str, *, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
        return request(self.url(path), method=method, token=token)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(5)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    app = p.App("admin-unit", partitions=2)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()

    async def build() -> Engine:  # the engine's asyncio objects belong to this loop
        return Engine(app, bootstrap_servers="127.0.0.1:1", state_dir=tmp_path)
    engine = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
    server = AdminServer.start(engine, AdminConfig(port=0, token=TOKEN, stall_s=1.0, loop_timeout_s=0.5), loop)
    s = Served(engine, server, loop)
    server.send_command = lambda partition, inv, kind: s.sent.append((partition, inv, kind))  # type: ignore[method-assign]
    try:
        yield s
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_healthz_fails_when_the_event_loop_stops_running_or_a_cycle_outlives_the_bound() -> None:
    h = Health()
    assert h.verdict(1.0) == (True, "starting or stopping")
    h.running = True
    now = time.monotonic()
    h.beat = now
    assert h.verdict(1.0, now + 0.5)[0]
    ok, why = h.verdict(1.0, now + 1.5)
    assert not ok and "event loop" in why
    h.beat = now + 10
    h.woke()
    assert h.busy_since is not None
    assert h.verdict(1.0, h.busy_since + 0.5)[0]
    ok, why = h.verdict(1.0, h.busy_since + 1.5)
    assert not ok and "commit loop" in why
    h.cycle_done()
    assert h.verdict(1.0, now + 10.5)[0]  # idle: nothing to commit is no stall


def test_probes_answer_without_a_token_and_readyz_follows_the_engine(served: Served) -> None:
    served.engine.health.running = True
    served.engine.health.beat = time.monotonic()
    assert served.request("/healthz")[0] == 200
    status, body = served.request("/readyz")
    assert status == 503 and orjson.loads(body)["ready"] is False
    served.on_loop(served.engine.ready.set)
    assert served.request("/readyz")[0] == 200
    served.engine.health.beat = time.monotonic() - 5
    status, body = served.request("/healthz")
    assert status == 503 and b"event loop" in body


def test_a_blocked_event_loop_gets_503_engine_busy_while_healthz_still_answers(served: Served) -> None:
    served.engine.health.running = True
    served.loop.call_soon_threadsafe(time.sleep, 3.0)  # a handler that blocks the loop
    t0 = time.monotonic()
    status, body = served.request("/api/cycle")
    assert status == 503 and b"engine busy" in body
    assert time.monotonic() - t0 < 2.5  # the loop timeout, not the block
    deadline = time.monotonic() + 5
    while served.request("/healthz")[0] != 503:  # the heartbeat is not running: stale after 1 s
        assert time.monotonic() < deadline, "healthz never failed"
        time.sleep(0.1)


def test_actions_without_the_token_get_401_and_produce_nothing(served: Served) -> None:
    inv = "inv-1-0123456789abcdef01234567"
    for token in (None, "wrong"):
        status, body = served.request(f"/api/invocations/{inv}/cancel", method="POST", token=token)
        assert status == 401, body
    assert served.sent == []
    status, body = served.request(f"/api/invocations/{inv}/kill", method="POST", token=TOKEN)
    assert status == 202, body  # partition 1 is not owned here: its owner decides
    assert orjson.loads(body) == {"invocation_id": inv, "action": "kill", "partition": 1, "owned": False}
    assert served.sent == [(1, inv, CommandKind.KILL)]


def test_actions_need_a_configured_token_even_on_loopback(served: Served) -> None:
    served.server.config = replace(served.server.config, token=None)
    status, body = served.request("/api/invocations/inv-0-00/retry", method="POST", token=TOKEN)
    assert status == 401 and b"--admin-token" in body
    assert served.sent == []


def test_beyond_loopback_every_request_but_the_probes_needs_the_token(served: Served) -> None:
    served.server.config = replace(served.server.config, host="10.1.2.3")  # as if bound there
    assert served.request("/api/partitions")[0] == 401
    assert served.request("/metrics")[0] == 401
    assert served.request("/api/partitions", token=TOKEN)[0] == 200
    assert served.request("/healthz")[0] == 200


def test_the_endpoint_refuses_to_listen_beyond_loopback_without_a_token() -> None:
    with pytest.raises(ConfigurationError, match="beyond loopback"):
        AdminConfig(port=0, host="0.0.0.0").check()
    AdminConfig(port=0, host="0.0.0.0", token="t").check()
    AdminConfig(port=0, host="::1").check()
    AdminConfig(port=0, host="localhost").check()


def test_metrics_are_prometheus_text_read_from_the_engine_at_scrape_time(served: Served) -> None:
    def count() -> None:
        served.engine.records_in["orders"] = 3
        served.engine.stats.created("svc/h")
        served.engine.stats.finished("svc/h", None)
        served.engine.timings.add("commit", 0.004)
        served.engine.timings.add_records(42)
    served.on_loop(count)
    status, body = served.request("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("processor_records_in_total", (("topic", "orders"),))] == 3
    assert samples[("processor_invocations_started_total", (("handler", "svc/h"),))] == 1
    assert samples[("processor_invocations_completed_total", (("handler", "svc/h"),))] == 1
    assert samples[("processor_commit_phase_seconds_count", (("phase", "commit"),))] == 1
    assert samples[("processor_commit_phase_seconds_bucket", (("le", "0.005"), ("phase", "commit")))] == 1
    assert samples[("processor_commit_phase_seconds_bucket", (("le", "0.0025"), ("phase", "commit")))] == 0
    assert samples[("processor_commit_cycle_records_sum", ())] == 42
    assert "process_cpu_seconds" in families


def test_unknown_paths_and_bad_queries_are_client_errors(served: Served) -> None:
    assert served.request("/nope")[0] == 404
    assert served.request("/api/invocations?status=bogus")[0] == 400
    assert served.request("/api/invocations?limit=0")[0] == 400
    assert served.request("/api/invocations/not-an-id")[0] == 404
    status, body = served.request("/api/invocations?status=running")
    assert status == 200 and orjson.loads(body) == {"partitions": [], "invocations": [], "complete": True}
