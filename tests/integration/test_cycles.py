"""What commit cycles hold, on the real broker.

Cycles are bounded: handlers nothing paces (no step, no wait) cannot grow one transaction without
limit. Before the bound, a backlog of such events went into one cycle of ~100,000 records that took
longer to commit and apply than ``transaction.timeout.ms``.

Invocations that finish within their cycle write only their effects: no row, journal, inbox entry or
timer reaches the changelog (docs/decisions/006-what-a-cycle-writes.md)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

import processor as p
from processor._engine.engine import Engine
from processor.state import keys
from tests.kafka_support import Kafka

pytestmark = pytest.mark.integration

EVENTS, KEYS, BOUND = 6_000, 60, 400


def _app(name: str, topic: str, out: str) -> p.App:
    app = p.App(name, max_cycle_records=BOUND)
    counter = app.virtual_object("counter")

    @counter.handler()
    async def count(ctx: p.ObjectContext, _event: dict[str, object]) -> None:
        n = (await ctx.get("n") or 0) + 1
        ctx.set("n", n)
        ctx.emit(out, {"key": ctx.key, "n": n}, key=ctx.key)

    app.subscribe(topic, count)
    return app


def test_a_backlog_of_unpaced_handlers_commits_in_bounded_cycles_that_write_only_their_state(
        kafka: Kafka, tmp_path: Path) -> None:
    name = kafka.unique("bound")
    topic, out = kafka.create_topic(f"{name}-in", 1), kafka.create_topic(f"{name}-out", 1)
    kafka.produce(topic, [(f"k{i % KEYS}".encode(), orjson.dumps({"i": i})) for i in range(EVENTS)])
    app = _app(name, topic, out)
    records = asyncio.run(asyncio.wait_for(_run(kafka, app, out, tmp_path), 150))
    got = kafka.drain(out)
    finals: dict[str, int] = {}
    for r in got:
        v = orjson.loads(r.value or b"")
        assert v["n"] == finals.get(v["key"], 0) + 1, f"key {v['key']}: {v['n']} after {finals.get(v['key'])}"
        finals[v["key"]] = v["n"]
    assert len(got) == EVENTS and set(finals.values()) == {EVENTS // KEYS}
    # Routing stops at the bound; one fetch (a tenth of it) routed into an almost full cycle may add
    # its handlers' writes on top.
    assert len(records) >= 5, f"the backlog went into {len(records)} cycle(s)"
    assert max(records) <= 2 * BOUND, f"a cycle of {max(records)} records (bound {BOUND})"

    changelog = kafka.drain(f"{name}.changelog")
    kinds = Counter((r.key or b"?")[:1] for r in changelog)
    assert set(kinds) <= {keys.STATE, keys.META, keys.INVOCATION, keys.INBOX}, f"unexpected records: {kinds}"
    # A cycle sealed because it is full can catch an invocation between its start and its end: only
    # those are saved (row and inbox entry, then their tombstones); every other one writes nothing.
    assert kinds[keys.INVOCATION] <= EVENTS // 20, f"{kinds[keys.INVOCATION]} invocation rows for {EVENTS} events"
    meta = [r for r in changelog if (r.key or b"")[:1] == keys.META]  # the steps log's generation and offset
    assert len(meta) <= 2 * len(records), f"{len(meta)} meta records in {len(records)} cycles"
    # a key's count written several times within a cycle is one record
    assert len(changelog) < EVENTS // 2, f"{len(changelog)} changelog records for {EVENTS} events"


async def _run(kafka: Kafka, app: p.App, out: str, tmp_path: Path) -> list[int]:
    engine = Engine(app, bootstrap_servers=kafka.bootstrap, state_dir=tmp_path / "state", instance_id="b1")
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.wait_for(engine.ready.wait(), 60)
        deadline = time.monotonic() + 120
        while len(await asyncio.to_thread(kafka.drain, out)) < EVENTS:
            assert time.monotonic() < deadline, "the backlog was not processed in time"
            assert not task.done(), f"the engine stopped: {task.exception() if task.done() else ''}"
            await asyncio.sleep(0.5)
        return list(engine.timings.records)
    finally:
        engine.request_stop()
        await asyncio.wait_for(task, 60)
