"""The HTTP ingress against a real processor and broker, through a real HTTP client (urllib): a
request invokes a handler and answers its result (or the invocation id at once), an idempotency key
makes a retried webhook one invocation, a webhook completes an awakeable a handler waits for, a slow
result is a 504 carrying the id, and every bad request gets a 4xx with a reason at once, having
produced nothing. Each accepted request is exactly one inbox command."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor._engine.commands import CommandKind, InboxCommand
from tests.apps import typed
from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.http_support import exchange
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "ingress-test-token"
AT_ONCE_S = 10.0


class Ingress:
    def __init__(self, kafka: Kafka, spawn: Spawner, tmp_path: Path, *, workers: int = 1,
                 token: str | None = TOKEN) -> None:
        self.kafka = kafka
        self.name = kafka.unique("ingress")
        self.awakeables = tmp_path / "awakeables"
        env = {"TYPED_APP": self.name, "TYPED_AWAKEABLES": str(self.awakeables)}
        if token:
            env["PROCESSOR_INGRESS_TOKEN"] = token
        self.token = token
        self.proc: ProcessorProcess = spawn("tests.apps.typed:app", env, workers=workers,
                                            args=("--ingress-port", "0", "--ingress-timeout-s", "20"))
        self.proc.start().wait_ready()
        self.proc.wait_log("ingress listening on")
        found = re.search(r"ingress listening on (http://127\.0\.0\.1:\d+)", self.proc.log())
        assert found is not None, self.proc.log()[-2000:]
        self.url = found.group(1)

    def post(self, path: str, value: Any = None, *, body: bytes | None = None,
             headers: dict[str, str] | None = None, token: str | None = "default") -> tuple[int, dict[str, str], Any]:
        data = body if body is not None else orjson.dumps(value)
        status, h, out = exchange(self.url + path, body=data, headers=headers,
                                  token=self.token if token == "default" else token)
        return status, h, orjson.loads(out) if out.strip() else None

    def get(self, path: str) -> tuple[int, dict[str, str], Any]:
        status, h, out = exchange(self.url + path, method="GET", token=self.token)
        return status, h, orjson.loads(out)

    def invokes(self) -> list[str]:
        """The invocation ids of the INVOKE commands in the app's inbox, in no particular order."""
        cmds = [InboxCommand.decode(r.value or b"") for r in self.kafka.drain(f"{self.name}.inbox")]
        return [c.invocation_id for c in cmds if c.kind is CommandKind.INVOKE and c.invocation_id]

    def awakeable_of(self, request_id: str) -> str:
        found: list[str] = []

        def seen() -> bool:
            lines = self.awakeables.read_text().splitlines() if self.awakeables.exists() else []
            found[:] = [line.split()[1] for line in lines if line.split()[0] == request_id]
            return bool(found)
        wait_until(seen, 60, f"the awakeable of {request_id}")
        return found[0]


def test_requests_invoke_handlers_and_answer_their_results_once_per_idempotency_key(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    ing = Ingress(kafka, spawn, tmp_path)
    order = {"id": "o1", "placed_at": "2026-11-30T06:00:00Z", "lines": [{"sku": "a", "qty": 2}]}
    status, headers, receipt = ing.post("/shop/place", order)
    assert status == 200, receipt
    assert receipt == {"order_id": "o1", "items": 2, "placed_at": "2026-11-30T06:00:00Z", "approved": True,
                       "charged_by": "payments/pay"}
    placed = headers["x-invocation-id"]

    retry = {"Idempotency-Key": "hook-1"}
    first = ing.post("/cart/k%2F1/add", {"sku": "x", "qty": 1}, headers=retry)  # key "k/1", percent-encoded
    again = ing.post("/cart/k%2F1/add", {"sku": "x", "qty": 1}, headers=retry)
    assert first[0] == again[0] == 200 and first[2] == again[2] == [{"sku": "x", "qty": 1}], (first, again)
    assert first[1]["x-invocation-id"] == again[1]["x-invocation-id"]  # one invocation: it ran once
    status, _, cart = ing.post("/cart/k%2F1/add", {"sku": "y", "qty": 2})
    assert status == 200 and cart == [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 2}]

    status, headers, started = ing.post("/shop/echo?wait=false", {"n": 7})
    assert status == 202 and started == {"invocation_id": headers["x-invocation-id"]}
    assert ing.get(f"/invocations/{started['invocation_id']}")[::2] == (200, {"n": 7})
    status, headers, started = ing.post("/shop/echo", [1, 2], headers={"Prefer": "respond-async"})
    assert status == 202 and ing.get(f"/invocations/{started['invocation_id']}")[::2] == (200, [1, 2])

    status, headers, failed = ing.post("/payments/pay", {"order_id": "o9", "amount": -5})
    assert status == 500 and failed["error_type"] == "TerminalError" and "negative" in failed["error"], failed
    assert failed["invocation_id"] == headers["x-invocation-id"]

    status, headers, ran = ing.post("/signup/u%2F1/run", {"sku": "first", "qty": 1})  # a workflow's run
    assert status == 200 and ran["key"] == "u/1" and ran["sku"] == "first", ran
    status, _, again_ran = ing.post("/signup/u%2F1/run", {"sku": "second", "qty": 1})
    assert status == 200 and again_ran == ran  # once per key: the first run's result

    invokes = ing.invokes()
    assert invokes.count(placed) == 1  # the request's one command (the handler's calls are its own)
    assert invokes.count(first[1]["x-invocation-id"]) == 2  # two requests, two commands, one invocation
    assert invokes.count(started["invocation_id"]) == 1
    assert ing.proc.stop() == 0


def test_a_webhook_resolves_or_rejects_the_awakeable_a_handler_waits_for(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    ing = Ingress(kafka, spawn, tmp_path)
    status, _, paid = ing.post("/approvals/ask?wait=false", {"id": "paid"})
    assert status == 202
    status, _, waited = ing.post("/approvals/ask?timeout=1", {"id": "declined"})
    assert status == 504 and waited["invocation_id"] and "/invocations/" in waited["error"], waited

    status, _, body = ing.post(f"/awakeables/{ing.awakeable_of('paid')}/resolve", {"by": "psp", "amount": 12})
    assert status == 202 and body["resolved"], body
    status, _, body = ing.post(f"/awakeables/{ing.awakeable_of('declined')}/reject", {"reason": "card declined"})
    assert status == 202 and body["rejected"], body

    assert ing.get(f"/invocations/{paid['invocation_id']}")[::2] == (
        200, {"id": "paid", "decision": {"by": "psp", "amount": 12}})
    assert ing.get(f"/invocations/{waited['invocation_id']}")[::2] == (
        200, {"id": "declined", "rejected": "card declined"})
    assert ing.proc.stop() == 0


def test_bad_requests_get_a_4xx_with_a_reason_at_once_and_produce_nothing(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    ing = Ingress(kafka, spawn, tmp_path)
    assert ing.post("/shop/echo", 1)[0] == 200  # the app is up, and its inbox exists
    before = len(kafka.drain(f"{ing.name}.inbox"))
    big = b'"' + b"x" * (600 * 1024) + b'"'
    bad_order = {"id": "o", "placed_at": "2026-11-30T06:00:00Z", "lines": [{"sku": "a", "qty": "many"}]}
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/shop/echo", {"token": None}, 401, "bearer token"),
        ("/shop/echo", {"token": "wrong"}, 401, "bearer token"),
        ("/shop/nosuch", {}, 404, "no handler shop/nosuch"),
        ("/nosuch/k/h", {}, 404, "no handler nosuch/h"),
        ("/cart/add", {}, 400, "cart/add is keyed"),
        ("/shop/k/echo", {}, 404, "service handler"),
        ("/a/b/c/d", {}, 404, "no such endpoint"),
        ("/shop/echo", {"body": b"{not json"}, 400, "not JSON"),
        ("/shop/place", {"value": bad_order}, 400, "$.lines[0].qty"),
        ("/cart/k/add", {"value": {"sku": "a"}}, 400, "qty"),
        ("/shop/echo", {"body": big}, 413, "over the limit"),
        ("/shop/echo?timeout=soon", {}, 400, "timeout must be a number"),
        ("/awakeables/nonsense/resolve", {}, 400, "not an awakeable id"),
        ("/awakeables/awk-inv-9999-x-1/resolve", {}, 404, "no invocation"),  # no partition 9999
        ("/awakeables/awk-inv-0-abc-1/reject", {"value": {"why": "no reason"}}, 400, "needs a reason"),
    ]
    for path, kw, want, words in cases:
        start = time.monotonic()
        status, _, body = ing.post(path, kw.get("value", {"any": 1}), body=kw.get("body"),
                                   token=kw.get("token", "default"))
        took = time.monotonic() - start
        assert status == want and words in body["error"], (path, kw.keys(), status, body)
        assert took < AT_ONCE_S, (path, took)
    for path, want, words in [("/invocations/not-an-id", 400, ""), ("/nope", 404, "no such endpoint")]:
        status, _, body = ing.get(path)
        assert status == want and words in body["error"], (path, status, body)
    assert len(kafka.drain(f"{ing.name}.inbox")) == before  # nothing was produced
    status, _, body = ing.get("/invocations/inv-0-" + "0" * 24)  # well formed: asked (one attach), unknown
    assert status == 404 and "no invocation" in body["error"], body
    assert ing.proc.stop() == 0


def test_one_ingress_serves_an_app_run_by_several_workers(kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    ing = Ingress(kafka, spawn, tmp_path, workers=2, token=None)
    for i in range(8):  # keys on every partition, owned by either worker
        status, _, cart = ing.post(f"/cart/w{i}/add", {"sku": f"s{i}", "qty": i})
        assert status == 200 and cart == [{"sku": f"s{i}", "qty": i}], (status, cart)
    assert typed.app.name  # the app module the processor runs
    assert ing.proc.stop() == 0
