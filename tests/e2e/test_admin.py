"""The admin endpoint of a live `processor run --admin-port` on the real broker: /readyz turns 200
once the assignment is ready, /metrics moves while events flow, the JSON API shows an invocation
with its journal and its key's state, an action without the token is refused and produces nothing,
with it the invocation is cancelled (and then purged); /healthz fails within its bound while a
handler blocks the event loop and recovers after."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.http_support import request
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "e2e-admin-token"
PARTITIONS = 2
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Admin:
    """HTTP to one processor's admin endpoint (its port read from its log)."""

    def __init__(self, proc: ProcessorProcess) -> None:
        self.proc = proc
        found: list[int] = []

        def listening() -> bool:
            if not self.proc.running():
                raise AssertionError(f"processor exited:\n{self.proc.log()[-4000:]}")
            m = re.search(r"admin endpoint listening on http://127\.0\.0\.1:(\d+)", self.proc.log())
            found[:] = [int(m.group(1))] if m else []
            return bool(found)
        wait_until(listening, 60, "the admin endpoint to listen")
        self.base = f"http://127.0.0.1:{found[0]}"

    def request(self, path: str, *, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
        return request(self.base + path, method=method, token=token)

    def json(self, path: str) -> Any:
        status, body = self.request(path)
        assert status == 200, (path, status, body)
        return orjson.loads(body)

    def metrics(self) -> Samples:
        status, body = self.request("/metrics")
        assert status == 200, body
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(body.decode()) for s in f.samples}


class AdminApp:
    def __init__(self, kafka: Kafka, spawn: Spawner, stall_s: float) -> None:
        self.kafka = kafka
        self.name = kafka.unique("admin")
        self.input = kafka.create_topic(f"{self.name}-in", PARTITIONS)
        self.output = kafka.create_topic(f"{self.name}-out", PARTITIONS)
        self.proc = spawn("tests.apps.admin:app",
                          {"ADMIN_APP": self.name, "ADMIN_INPUT": self.input, "ADMIN_OUTPUT": self.output,
                           "PROCESSOR_ADMIN_TOKEN": TOKEN},
                          args=["--admin-port", "0", "--admin-stall-s", str(stall_s)])

    def produce(self, events: list[dict[str, Any]]) -> None:
        self.kafka.produce(self.input, [(e["key"].encode(), orjson.dumps(e)) for e in events])

    def outputs(self) -> int:
        return len(self.kafka.drain(self.output))

    def inbox_ends(self) -> list[int]:
        return self.kafka.end_offsets(f"{self.name}.inbox", PARTITIONS)


def _ready(admin: Admin) -> None:
    wait_until(lambda: admin.request("/readyz")[0] == 200, 90, "/readyz to answer 200")


def test_readyz_metrics_json_api_and_token_guarded_actions_of_a_live_processor(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    a = AdminApp(kafka, spawn, stall_s=30)
    a.proc.start()
    admin = Admin(a.proc)
    _ready(admin)
    assert "assigned partitions" in a.proc.log()  # ready as the engine says it
    assert admin.request("/healthz")[0] == 200

    # -- metrics move while events flow
    handle = (("handler", "acct/handle"),)
    a.produce([{"key": f"k{i % 10}", "id": f"e{i}"} for i in range(20)])
    wait_until(lambda: a.outputs() == 20, 60, "20 outputs")
    first = admin.metrics()
    assert first[("processor_records_in_total", (("topic", a.input),))] == 20
    assert first[("processor_invocations_started_total", handle)] == 20
    assert first[("processor_invocations_completed_total", handle)] == 20
    assert first[("processor_step_attempts_count", ())] == 20
    assert sum(v for (name, labels), v in first.items() if name == "processor_step_seconds_count"
               and dict(labels).get("handler") == "acct/handle") == 20
    assert first[("processor_commit_phase_seconds_count", (("phase", "cycle"),))] >= 1
    assert first[("processor_partitions_active", ())] == PARTITIONS
    a.produce([{"key": f"k{i % 10}", "id": f"f{i}"} for i in range(30)])
    wait_until(lambda: a.outputs() == 50, 60, "50 outputs")
    second = admin.metrics()
    assert second[("processor_records_in_total", (("topic", a.input),))] == 50
    assert second[("processor_invocations_completed_total", handle)] == 50
    assert second[("processor_commits_total", ())] > first[("processor_commits_total", ())]
    assert second[("processor_commit_cycle_records_sum", ())] > first[("processor_commit_cycle_records_sum", ())]

    # -- an invocation waiting on an awakeable, found by key, with its journal and its key's state
    a.produce([{"key": "w1", "id": "w1", "wait": True}])
    found: list[dict[str, Any]] = []

    def waiting() -> bool:
        rows = admin.json("/api/invocations?key=w1&handler=acct/handle")["invocations"]
        found[:] = [r for r in rows if r["status"] in ("running", "suspended")]
        return bool(found) and admin.json(f"/api/invocations/{found[0]['id']}")["journal"][-1]["kind"] == "awakeable"
    wait_until(waiting, 60, "the waiting invocation of key w1")
    inv = found[0]["id"]
    one = admin.json(f"/api/invocations/{inv}")
    assert one["input"] == {"key": "w1", "id": "w1", "wait": True}
    assert one["source"]["topic"] == a.input
    assert [(e["kind"], e["name"], e["state"]) for e in one["journal"]] == [
        ("get", "n", "done"), ("set", "n", "done"), ("run", "note", "done"), ("awakeable", "awakeable", "waiting")]
    assert one["journal"][2]["value"] == "noted w1"
    assert admin.json("/api/state/acct/w1")["state"] == {"n": 1}
    parts = admin.json("/api/partitions")["partitions"]
    assert [(p["partition"], p["phase"]) for p in parts] == [(0, "active"), (1, "active")]

    def committed() -> int:  # the cycle saving the waiting invocation commits its record's offset
        return sum(p["committed_offsets"].get(a.input, 0) for p in admin.json("/api/partitions")["partitions"])
    wait_until(lambda: committed() >= 51, 30, "every input offset committed")
    assert set(admin.json("/api/cycle")["partitions"]) == {"0", "1"}
    assert admin.request("/api/timers?limit=5")[0] == 200

    # -- an action without the token is refused and produces nothing
    ends = a.inbox_ends()
    for token in (None, "not-the-token"):
        status, _ = admin.request(f"/api/invocations/{inv}/cancel", method="POST", token=token)
        assert status == 401
    assert a.inbox_ends() == ends
    assert admin.json(f"/api/invocations/{inv}")["status"] in ("running", "suspended")

    # -- with the token it cancels; a finished invocation can then be purged
    status, body = admin.request(f"/api/invocations/{inv}/cancel", method="POST", token=TOKEN)
    assert status == 202, body
    assert orjson.loads(body)["owned"] is True

    def cancelled() -> bool:
        return bool(admin.json(f"/api/invocations/{inv}")["status"] == "failed")
    wait_until(cancelled, 60, f"{inv} to be cancelled")
    row = admin.json(f"/api/invocations/{inv}")
    assert row["error_type"] == "Cancelled"
    assert admin.json("/api/state/acct/w1")["state"] == {"n": 1, "cancelled": "w1"}
    assert admin.request(f"/api/invocations/{inv}/cancel", method="POST", token=TOKEN)[0] == 409
    assert admin.request(f"/api/invocations/{inv}/purge", method="POST", token=TOKEN)[0] == 202
    wait_until(lambda: admin.request(f"/api/invocations/{inv}")[0] == 404, 60, f"{inv} to be purged")
    assert admin.metrics()[("processor_invocations_failed_total", handle)] == 1
    lag: list[float] = []

    def lag_reported() -> bool:  # from the consumer's statistics, every 5 s
        lag[:] = [v for (name, labels), v in admin.metrics().items()
                  if name == "processor_consumer_lag_records" and ("topic", a.input) in labels]
        return len(lag) == PARTITIONS
    wait_until(lag_reported, 30, "consumer lag of both input partitions")
    assert all(n >= 0 for n in lag)
    assert a.proc.stop() == 0


def test_healthz_fails_within_its_bound_while_a_handler_blocks_the_event_loop(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    bound = 2.0
    a = AdminApp(kafka, spawn, stall_s=bound)
    a.proc.start()
    admin = Admin(a.proc)
    _ready(admin)
    assert admin.request("/healthz")[0] == 200
    a.produce([{"key": "slow", "id": "slow", "block_loop_s": 10}])
    produced = time.monotonic()
    wait_until(lambda: admin.request("/healthz")[0] == 503, bound + 6, "/healthz to fail")
    assert time.monotonic() - produced < bound + 6
    status, body = admin.request("/healthz")
    assert status == 503 and b"event loop" in body, body
    status, body = admin.request("/api/cycle")
    assert status == 503 and b"engine busy" in body, body
    wait_until(lambda: admin.request("/healthz")[0] == 200, 30, "/healthz to recover once the loop runs")
    wait_until(lambda: a.outputs() == 1, 60, "the blocked handler's output")
    assert a.proc.stop() == 0
