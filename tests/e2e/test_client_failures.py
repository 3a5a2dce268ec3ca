"""A Client learns at once why an invocation cannot run or did not finish: a call to an unknown
handler, or to a keyed handler without a key, fails with the reason (no waiting out the timeout), and
the result of a cancelled or killed invocation raises an error type a caller can catch."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import processor as p
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import Durable, run
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

SHORT = timedelta(seconds=30)  # the Client's wait if no answer comes; answers must come far sooner
AT_ONCE_S = 15.0


def test_a_call_to_an_unknown_handler_or_a_keyed_handler_without_a_key_fails_at_once_with_the_reason(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()

    async def call(target: str, **kw: Any) -> tuple[BaseException | None, float]:
        start = time.monotonic()
        try:
            async with d.client() as client:
                await client.call(target, {"id": "x"}, timeout=SHORT, **kw)
        except Exception as e:
            return e, time.monotonic() - start
        return None, time.monotonic() - start

    for target, kw, error_type, words in [("nosuch/h", {}, "UnknownHandler", "nosuch/h"),
                                          ("line/join", {}, "MissingKey", "line/join")]:
        err, took = run(call(target, **kw))
        assert isinstance(err, p.TerminalError), f"{target}: {err!r} after {took:.1f}s"
        assert took < AT_ONCE_S, f"{target}: the failure took {took:.1f}s"
        assert err.error_type == error_type and words in err.message, (err.error_type, err.message)

    async def invoke_then_result() -> BaseException | None:
        async with d.client() as client:
            inv = await client.invoke("nosuch/h", {"id": "y"}, idempotency_key="later")
            try:
                await client.result(inv, timeout=SHORT)
            except Exception as e:
                return e
        return None
    err = run(invoke_then_result())
    assert isinstance(err, p.TerminalError) and err.error_type == "UnknownHandler", repr(err)
    wait_until(lambda: len(kafka.drain(f"{d.name}.dlq")) >= 3, 30, "the refused commands in the DLQ")
    assert d.proc.stop() == 0


def test_the_result_of_a_cancelled_or_killed_invocation_raises_its_own_error_type(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()

    async def book(ev_id: str) -> str:
        async with d.client() as client:
            return await client.invoke("booking/book", {"id": ev_id})
    cancelled, killed = run(book("c1")), run(book("k1"))
    d.wait_output("c1", "holding")
    d.wait_output("k1", "holding")

    async def stop_and_read(inv: str, how: str) -> BaseException | None:
        async with d.client() as client:
            await (client.cancel(inv) if how == "cancel" else client.kill(inv))
            try:
                await client.result(inv, timeout=SHORT)
            except Exception as e:
                return e
        return None
    err = run(stop_and_read(cancelled, "cancel"))
    assert isinstance(err, p.InvocationCancelled), repr(err)
    err = run(stop_and_read(killed, "kill"))
    assert type(err).__name__ == "InvocationKilled", repr(err)
    assert isinstance(err, p.InvocationKilled) and isinstance(err, p.TerminalError)
    assert err.error_type == "Killed"
    assert d.proc.stop() == 0
