"""Suspension: 10,000 sleeping invocations leave memory (the engine's own count drops to 0) while their
timers wait in LMDB, and every one of them completes when its timer fires.

The engine runs in this test's process so the test can read its count of in-memory invocations."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import processor as p
from processor._admin import api
from processor._engine.engine import Engine
from processor._engine.records import InvocationRow, Status
from processor.state import keys
from tests.kafka_support import Kafka

pytestmark = pytest.mark.e2e

N = 10_000
SLEEP_S = 20.0  # long enough for all N to be created and evicted before the first timer is due


def _app(name: str, topic: str, out: str) -> p.App:
    app = p.App(name, suspend_after=timedelta(seconds=1))
    svc = app.service("sleeper")

    @svc.handler()
    async def nap(ctx: p.Context, ev: dict[str, Any]) -> None:
        await ctx.sleep(timedelta(seconds=ev["s"]))
        ctx.emit(out, {"i": ev["i"]}, key=str(ev["i"]))

    app.subscribe(topic, nap)
    return app


def test_ten_thousand_sleeping_invocations_are_evicted_from_memory_and_all_complete_when_due(
        kafka: Kafka, tmp_path: Path) -> None:
    name = kafka.unique("suspend")
    topic, out = kafka.create_topic(f"{name}-in", 4), kafka.create_topic(f"{name}-out", 4)
    asyncio.run(asyncio.wait_for(_scenario(kafka, _app(name, topic, out), topic, out, tmp_path), 170))


async def _scenario(kafka: Kafka, app: p.App, topic: str, out: str, tmp_path: Path) -> None:
    engine = Engine(app, bootstrap_servers=kafka.bootstrap, state_dir=tmp_path / "state", instance_id="s1")
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.wait_for(engine.ready.wait(), 60)
        events = [(f"k{i}".encode(), orjson.dumps({"i": i, "s": SLEEP_S})) for i in range(N)]
        await asyncio.to_thread(kafka.produce, topic, events)
        produced = time.time()

        def statuses() -> Counter[Status]:
            return Counter(InvocationRow.decode(v).status for w in engine.workers.values()
                           for _, v in w.state.scan(keys.INVOCATION))

        def timers() -> int:
            return sum(1 for w in engine.workers.values() for _ in w.state.scan(keys.TIMER))

        peak = 0
        while True:  # until every invocation exists and none is left in memory
            assert not task.done(), task.exception() if task.done() else ""
            peak = max(peak, engine.in_memory_invocations())
            if engine.in_memory_invocations() == 0 and sum(statuses().values()) == N:
                break
            assert time.time() < produced + SLEEP_S - 5, (
                f"still {engine.in_memory_invocations()} in memory, {statuses()} stored, close to the first due time")
            await asyncio.sleep(0.5)
        evicted = time.time()
        assert statuses() == {Status.SUSPENDED: N}
        assert timers() == N, "every sleep waits as a timer row"
        assert evicted < produced + SLEEP_S, "evicted before any timer was due"
        assert peak > 0, "they were in memory before"
        api._stored.clear()  # what /metrics shows: processor_timers_stored, processor_invocations_out_of_memory
        assert api.stored_counts(engine) == {"timers": N, "out_of_memory": N}
        print(f"{N} created and evicted in {evicted - produced:.1f}s (peak {peak} in memory)")

        async def outputs() -> int:
            return len(await asyncio.to_thread(kafka.drain, out))
        deadline = produced + SLEEP_S + 90
        while (n := await outputs()) < N:
            assert not task.done(), task.exception() if task.done() else ""
            assert time.time() < deadline, f"{n} of {N} outputs {time.time() - produced:.0f}s after producing"
            await asyncio.sleep(1.0)
        print(f"all {N} completed {time.time() - produced:.1f}s after producing")
        # a topic record's finished invocation keeps nothing (docs/decisions/006-what-a-cycle-writes.md)
        assert statuses() == Counter() and timers() == 0, "finished invocations left rows or timers behind"
        api._stored.clear()
        assert api.stored_counts(engine) == {"timers": 0, "out_of_memory": 0}
        got = sorted(orjson.loads(r.value or b"")["i"] for r in await asyncio.to_thread(kafka.drain, out))
        assert got == list(range(N)), "each exactly once"
    finally:
        engine.request_stop()
        await asyncio.wait_for(task, 60)
