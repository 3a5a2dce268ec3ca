"""A bound record that lands on a partition that does not own its key is forwarded to the owner as a
`forward` inbox command and processed there as if it had landed there; services are not forwarded.
Driven on partition workers over the in-memory store, without Kafka."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import processor as p
from processor import schemas
from processor._engine import forwarding, routing
from processor._engine.core import invocation_id_for_record
from processor._engine.partition import PartitionWorker
from processor._engine.records import InRecord, InvocationRow, OutRecord
from processor.state.memory import MemoryStore

P = 4
KEY = next(k for k in (f"k{i}".encode() for i in range(100)) if routing.partition_for_key(k, P) != 0)
OWNER = routing.partition_for_key(KEY, P)


def _nothing() -> None:
    return None


def _app() -> p.App:
    app = p.App("fwd", partitions=P)
    obj, svc = app.virtual_object("obj"), app.service("svc")

    # Each handler waits on a step, whose result no commit in these tests releases: the
    # invocation stays in memory, where its row shows which partition runs it.
    @obj.handler()
    async def put(ctx: p.ObjectContext, ev: Any) -> None:
        ctx.set("v", ev)
        await ctx.run("hold", _nothing)

    @svc.handler()
    async def log(ctx: p.Context, ev: Any) -> None:
        await ctx.run("hold", _nothing)

    app.subscribe("objects", put)
    app.subscribe("events", log)
    return app


def _worker(app: p.App, partition: int, stats: forwarding.ForwardStats, pool: ThreadPoolExecutor) -> PartitionWorker:
    w = PartitionWorker(app=app, partition=partition, partitions_total=P, store=MemoryStore(), step_executor=pool,
                        on_work=lambda: None)
    w.forwards = stats
    w.load()
    return w


def _rows(w: PartitionWorker) -> list[InvocationRow]:
    return w.rows()


def _inbox(w: PartitionWorker) -> list[OutRecord]:
    return [o for o in w.seal().outputs if o.topic == "fwd.inbox"]


def _deliver(owner: PartitionWorker, forwarded: OutRecord, offset: int) -> None:
    owner.on_inbox(InRecord(topic="fwd.inbox", partition=owner.partition, offset=offset, key=forwarded.key,
                            value=forwarded.value))


def _run(scenario: Callable[[p.App, ThreadPoolExecutor], Any]) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            await scenario(_app(), pool)
    asyncio.run(main())


def _record(topic: str, offset: int, value: bytes | None = b'{"n": 1}') -> InRecord:
    return InRecord(topic=topic, partition=0, offset=offset, key=KEY, value=value,
                    headers=[("h", b"1"), ("h", b"\xff2")])


def test_a_record_of_a_key_owned_elsewhere_is_forwarded_once_with_its_offset_and_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(app: p.App, pool: ThreadPoolExecutor) -> None:
        stats = forwarding.ForwardStats()
        landed = _worker(app, 0, stats, pool)
        with caplog.at_level(logging.WARNING, logger="processor.routing"):
            landed.on_input(_record("objects", 7), app.bindings["objects"])
            landed.on_input(_record("objects", 8), app.bindings["objects"])
        assert _rows(landed) == [], "not processed where it landed"
        sealed = landed.seal()
        assert sealed.offsets == {"objects": 9}, "its offset commits with the forward"
        assert [(o.topic, o.partition) for o in sealed.outputs] == [("fwd.inbox", OWNER)] * 2
        cmd = schemas.decode("InboxCommand", sealed.outputs[0].value or b"")
        assert (cmd["kind"], cmd["source_topic"], cmd["source_partition"], cmd["source_offset"]) == (
            "forward", "objects", 0, 7)
        assert (cmd["record_key"], cmd["payload"]) == (KEY, b'{"n": 1}')
        assert cmd["headers"] == [{"name": "h", "value": b"1"}, {"name": "h", "value": b"\xff2"}]
        assert stats.counts == {"objects": 2} and stats.total == 2
        warnings = [r.getMessage() for r in caplog.records if "murmur2" in r.getMessage()]
        assert len(warnings) == 1 and "objects" in warnings[0] and "partitioner=murmur2_random" in warnings[0]
        landed.discard()
    _run(scenario)


def test_a_service_record_is_processed_where_it_landed() -> None:
    async def scenario(app: p.App, pool: ThreadPoolExecutor) -> None:
        stats = forwarding.ForwardStats()
        landed = _worker(app, 0, stats, pool)
        landed.on_input(_record("events", 3), app.bindings["events"])
        assert [r.id for r in _rows(landed)] == [invocation_id_for_record("events", 0, 3)]
        assert _inbox(landed) == [] and stats.total == 0
        landed.discard()
    _run(scenario)


def test_the_owner_processes_a_forward_as_the_record_itself_and_a_redelivered_forward_starts_nothing() -> None:
    async def scenario(app: p.App, pool: ThreadPoolExecutor) -> None:
        stats = forwarding.ForwardStats()
        landed, owner = _worker(app, 0, stats, pool), _worker(app, OWNER, stats, pool)
        landed.on_input(_record("objects", 7), app.bindings["objects"])
        [fwd] = _inbox(landed)
        _deliver(owner, fwd, 0)
        _deliver(owner, fwd, 1)  # the same forward again
        [row] = _rows(owner)
        assert row.id == invocation_id_for_record("objects", 0, 7, owner=OWNER)
        assert routing.partition_of(row.id) == OWNER
        assert (row.key, row.source_topic, row.source_partition, row.source_offset) == (KEY.decode(), "objects", 0, 7)
        assert row.input_headers == {"h": b"\xff2"}
        assert owner.seal().offsets == {"fwd.inbox": 2}, "the owner commits its inbox, not the source's offset"
        assert row.id != invocation_id_for_record("objects", OWNER, 7), "no clash with the owner's own offset 7"
        landed.discard()
        owner.discard()
    _run(scenario)


def test_the_owner_dead_letters_a_forwarded_record_with_the_reason_and_source_of_the_original() -> None:
    async def scenario(app: p.App, pool: ThreadPoolExecutor) -> None:
        stats = forwarding.ForwardStats()
        landed, owner = _worker(app, 0, stats, pool), _worker(app, OWNER, stats, pool)
        landed.on_input(_record("objects", 4, b'{"n": '), app.bindings["objects"])
        landed.on_input(_record("objects", 5, None), app.bindings["objects"])
        for i, fwd in enumerate(_inbox(landed)):
            _deliver(owner, fwd, i)
        dead = owner.seal().outputs
        assert [(d.topic, d.partition, d.key, d.value) for d in dead] == [
            ("fwd.dlq", OWNER, KEY, b'{"n": '), ("fwd.dlq", OWNER, KEY, None)]
        headers = [dict(d.headers) for d in dead]
        assert [h["processor.error.class"] for h in headers] == [b"SerdeError", b"MissingValue"]
        assert [(h["processor.source.topic"], h["processor.source.partition"], h["processor.source.offset"])
                for h in headers] == [(b"objects", b"0", b"4"), (b"objects", b"0", b"5")]
        assert _rows(owner) == []

        other = _worker(app, (OWNER + 1) % P, stats, pool)  # a forward that reached the wrong partition
        _deliver(other, _forward_of(landed, app), 0)
        [wrong] = other.seal().outputs
        assert dict(wrong.headers)["processor.error.class"] == b"WrongPartition"
        for w in (landed, owner, other):
            w.discard()
    _run(scenario)


def _forward_of(landed: PartitionWorker, app: p.App) -> OutRecord:
    landed.on_input(_record("objects", 9), app.bindings["objects"])
    [fwd] = _inbox(landed)
    return fwd


def test_an_inbox_command_of_schema_version_2_is_read_with_the_forward_fields_defaulted() -> None:
    from processor.schemas._codec import encode_as

    old = encode_as("InboxCommand", 2, {"kind": "invoke", "invocation_id": "inv-1-ab", "service": "s",
                                        "handler": "h", "payload": b"{}", "notify": True})
    assert old[0] == 2 and schemas.CURRENT_VERSIONS["InboxCommand"] == 3
    cmd = schemas.decode("InboxCommand", old)
    assert (cmd["kind"], cmd["invocation_id"], cmd["notify"]) == ("invoke", "inv-1-ab", True)
    assert (cmd["source_topic"], cmd["source_partition"], cmd["source_offset"], cmd["record_key"],
            cmd["headers"]) == (None, -1, -1, None, [])
