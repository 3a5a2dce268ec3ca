"""Cancel reaches a handler at its durable await (its compensation runs) and the call it awaits; kill
stops an invocation at once with no compensation. A cancelled or killed queued invocation of an
object key leaves the key's queue flowing."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor._engine.records import InvocationRow, Status
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import Durable, run
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def _book(d: Durable, ev_id: str) -> tuple[str, InvocationRow]:
    """Invoke booking/book for `ev_id` and wait until its callee holds (awaits its awakeable)."""
    async def invoke() -> str:
        async with d.client() as client:
            return await client.invoke("booking/book", {"id": ev_id})
    a = run(invoke())
    d.wait_output(ev_id, "holding")
    [b] = [r for r in d.rows_of("holder/hold_until_decided") if r.caller_id == a]
    return a, b


def _finished(d: Durable, inv: str) -> InvocationRow:
    got: list[InvocationRow] = []

    def done() -> bool:
        row = d.row(inv)
        got[:] = [row] if row is not None and row.status.terminal else []
        return bool(got)
    wait_until(done, 60, f"{inv} to finish")
    return got[0]


def test_cancel_raises_at_the_callers_await_runs_its_compensation_and_cancels_the_callee(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    a, b = _book(d, "c1")

    async def cancel() -> None:
        async with d.client() as client:
            await client.cancel(a)
    run(cancel())
    ra, rb = _finished(d, a), _finished(d, b.id)
    assert d.proc.stop() == 0

    assert ra.status is Status.FAILED and ra.failure is not None and ra.failure.type == "Cancelled"
    assert rb.status is Status.FAILED and rb.failure is not None and rb.failure.type == "Cancelled"
    assert d.effects() == {"reserve:c1": 1, "compensate:c1": 1}
    kinds = [(e.kind, e.name, e.failure.type if e.failure else None) for e in d.journal(a)]
    assert kinds == [("run", "reserve", None), ("call", "holder/hold_until_decided", "Cancelled"),
                     ("run", "compensate", None)]


def test_a_cancel_sent_while_the_processor_is_down_is_delivered_after_restart(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    a, b = _book(d, "c2")
    d.proc.kill()

    async def cancel() -> None:
        async with d.client() as client:
            await client.cancel(a)
    run(cancel())
    d.proc.start().wait_ready()
    ra, rb = _finished(d, a), _finished(d, b.id)
    assert d.proc.stop() == 0
    assert (ra.status, rb.status) == (Status.FAILED, Status.FAILED)
    assert ra.failure is not None and rb.failure is not None
    assert (ra.failure.type, rb.failure.type) == ("Cancelled", "Cancelled")
    assert d.effects() == {"reserve:c2": 1, "compensate:c2": 1}


def test_cancel_reaches_suspended_invocations_and_runs_the_compensation(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path, suspend_s=0.5)
    d.proc.start().wait_ready()
    a, b = _book(d, "c3")
    wait_until(lambda: {(r.status) for r in (d.row(a), d.row(b.id)) if r} == {Status.SUSPENDED}, 30,
               "caller and callee to be suspended")

    async def cancel() -> None:
        async with d.client() as client:
            await client.cancel(a)
    run(cancel())
    ra, rb = _finished(d, a), _finished(d, b.id)
    assert d.proc.stop() == 0
    assert ra.failure is not None and rb.failure is not None
    assert (ra.failure.type, rb.failure.type) == ("Cancelled", "Cancelled")
    assert d.effects() == {"reserve:c3": 1, "compensate:c3": 1}


def test_kill_stops_an_invocation_at_once_without_compensation(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    a, _b = _book(d, "k1")

    async def kill() -> None:
        async with d.client() as client:
            await client.kill(a)
    run(kill())
    ra = _finished(d, a)
    assert ra.status is Status.FAILED and ra.failure is not None and ra.failure.type == "Killed"
    assert "killed" in d.proc.log()
    assert d.proc.stop() == 0
    assert d.effects() == {"reserve:k1": 1}, "no compensation ran"
    assert [e.kind for e in d.journal(a)] == ["run", "call"], "the handler took no step after the kill"


def test_cancelling_or_killing_a_queued_invocation_lets_the_keys_queue_flow_on(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()

    async def join_all() -> list[str]:
        async with d.client() as client:
            return [await client.invoke("line/join", {"id": f"q{i}"}, key="k") for i in range(1, 5)]
    q1, q2, q3, q4 = run(join_all())
    turn1 = d.wait_output("q1", "turn")["turn"]
    wait_until(lambda: all(d.row(q) is not None for q in (q2, q3, q4)), 30, "q2..q4 to queue behind q1")

    async def stop_two_and_serve_q1() -> None:
        async with d.client() as client:
            await client.cancel(q2)
            await client.kill(q3)
            await client.resolve_awakeable(turn1, None)
    run(stop_two_and_serve_q1())
    turn4 = d.wait_output("q4", "turn")["turn"]

    async def serve_q4() -> None:
        async with d.client() as client:
            await client.resolve_awakeable(turn4, None)
    run(serve_q4())
    r4 = _finished(d, q4)
    assert d.proc.stop() == 0
    statuses = {q: (r.status, r.failure.type if r.failure else None)
                for q, r in ((q, d.row(q)) for q in (q1, q2, q3)) if r is not None}
    assert statuses == {q1: (Status.COMPLETED, None), q2: (Status.FAILED, "Cancelled"),
                        q3: (Status.FAILED, "Killed")}
    assert r4.status is Status.COMPLETED
    assert d.effects() == {"served:q1": 1, "served:q4": 1}
    assert not d.outputs_of("q2") and not d.outputs_of("q3"), "they never ran"
