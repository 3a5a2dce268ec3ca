"""Races between the engine's poll loop, commit loop, rebuild, restores and rebalance callbacks, driven
without a broker: the Kafka calls are fakes that block until the test lets them go."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

import processor as p
from processor._engine import ownership as ownership_mod
from processor._engine import txn
from processor._engine.engine import Engine
from processor._engine.lanes import Deadline
from processor._engine.ownership import Restore
from processor._engine.partition import PartitionWorker
from processor.state import keys
from processor.state.changelog import RestoreCancelled, RestoreStats
from processor.state.memory import MemoryStore


def _engine(tmp_path: Path) -> Engine:
    e = Engine(p.App("races", partitions=1), bootstrap_servers="unused:1", state_dir=tmp_path)
    e._loop = asyncio.get_running_loop()
    e._producers = [object(), object()]  # type: ignore[list-item]
    e._new_producer = lambda slot: object()  # type: ignore[assignment,method-assign,return-value]
    e._group_metadata = object()
    e.partitions_total = 1
    return e


def _worker(e: Engine, store: MemoryStore) -> PartitionWorker:
    w = PartitionWorker(app=e.app, partition=0, partitions_total=1, store=store, step_executor=e.step_executor,
                        on_work=lambda: None)
    w.load()
    return w


async def _until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _run(tmp_path: Path, test: Callable[[Engine], Awaitable[None]]) -> None:
    async def main() -> None:
        e = _engine(tmp_path)
        try:
            await test(e)
        finally:
            for lane in (e._consumer_lane, *e._producer_lanes):
                lane.close()
            e.step_executor.shutdown(wait=False)
            e._apply_pool.shutdown(wait=False)
    asyncio.run(main())


class _FakeConsumer:
    """committed() blocks until `go` is set; seeks and resumes are recorded."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.entered = threading.Event()
        self.seeks: list[tuple[str, int, int]] = []
        self.resumed: list[tuple[str, int]] = []

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.entered.set()
        self.go.wait(10)
        return [TopicPartition(tp.topic, tp.partition, 7) for tp in tps]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def resume(self, tps: list[TopicPartition]) -> None:
        self.resumed.extend((tp.topic, tp.partition) for tp in tps)


def test_a_partition_activated_while_a_rebuild_runs_is_rewound_before_it_is_processed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The poll loop drops every fetched record while a rebuild runs. A partition whose activation was
    under way when the rebuild began (the rebuild did not see its worker) must not come out of it
    active at the consumer's position: the records dropped meanwhile would never be read again."""
    probe_go = threading.Event()

    def probe(*_: Any) -> None:
        probe_go.wait(10)

    monkeypatch.setattr(txn, "probe", probe)
    monkeypatch.setattr(Engine, "_group_offsets", lambda _self, _partitions: [])

    async def test(e: Engine) -> None:
        consumer = _FakeConsumer()
        e._consumer = consumer  # type: ignore[assignment]
        e._stores[0] = MemoryStore()
        e._owned = {0}
        e._restored[0] = Restore(partition=0, seek=False)
        activating = asyncio.create_task(e._activate())
        await _until(consumer.entered.is_set, "committed() to be called")
        e._begin_rebuild("a commit failed")  # e.g. from the commit loop, while activate awaits the consumer
        await asyncio.sleep(0.05)  # the rebuild drops the workers it finds and starts its ownership check
        consumer.go.set()
        await activating
        # ... records of partition 0 fetched now are dropped: the rebuild is still running
        assert e._rebuilding
        probe_go.set()
        await _until(lambda: not e._rebuilding, "the rebuild to finish")
        await _until(lambda: 0 in e._restored or 0 in e.workers, "partition 0 to be restored")
        if 0 in e._restored:
            await e._activate()
        assert 0 in e.workers
        assert ("races.inbox", 0, 7) in consumer.seeks, (
            "partition 0 went on from the consumer's position: the records dropped during the rebuild are lost")

    _run(tmp_path, test)


def test_a_revoke_that_gives_up_waiting_for_a_commit_does_not_break_that_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_release` drops the workers without the commit lock when its deadline passes; the commit in flight
    then finishes (it committed in Kafka) and must neither crash the commit loop nor release results of
    invocations that were dropped."""
    commit_go, commit_in = threading.Event(), threading.Event()

    def commit(_producer: Any, *, slices: Any, **_: Any) -> txn.Written:
        commit_in.set()
        commit_go.wait(10)
        w = txn.Written()
        for s in slices:
            for n, _kv in enumerate(s.overlay.items()):
                w.add(s.partition, n)
        return w

    monkeypatch.setattr(txn, "commit", commit)

    async def test(e: Engine) -> None:
        store = MemoryStore()
        applied: list[int] = []
        apply = store.apply

        def recording_apply(writes: Any, offset: int) -> None:
            apply(writes, offset)
            applied.append(offset)

        store.apply = recording_apply  # type: ignore[method-assign]
        e._stores[0] = store
        e._owned = {0}
        w = e.workers[0] = _worker(e, store)
        released: list[str] = []
        w.write(keys.meta_key("x"), b"1")
        w.after_commit(lambda: released.append("old invocation"))
        cycle = asyncio.create_task(e.commit_cycle())
        await _until(commit_in.is_set, "the commit to be in flight")
        await e._release({0}, commit=False, deadline=Deadline(0.2))  # a lost partition, its deadline gone
        assert 0 not in e.workers
        commit_go.set()
        assert await cycle is True  # committed in Kafka: applied, not an error
        assert applied == [1]
        assert not released, "a dropped invocation's result was released"

    _run(tmp_path, test)


def test_a_partition_given_back_while_its_stopped_restore_still_runs_is_restored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A revoke stops a restore but may not wait for it to end (its deadline passed). If the partition
    is assigned again before that restore ends, it must still be restored and activated — never left
    paused for good — and never by two restores writing its store at once."""
    first_go = threading.Event()
    calls: list[str] = []
    running = [0]

    def restore(store: Any, *, should_stop: Callable[[], bool], **_: Any) -> RestoreStats:
        running[0] += 1
        try:
            assert running[0] == 1, "two restores of one store at once"
            calls.append("restore")
            if len(calls) == 1:  # the first one is slow to notice it was stopped (e.g. in list_offsets)
                first_go.wait(10)
            if should_stop():
                raise RestoreCancelled("stopped")
            return RestoreStats(records=0, start_offset=0, end_offset=0, seconds=0.0)
        finally:
            running[0] -= 1

    monkeypatch.setattr(ownership_mod, "restore", restore)

    async def test(e: Engine) -> None:
        e._stores[0] = MemoryStore()
        e._owned = {0}
        e._start_restore(0, seek=False)
        await _until(lambda: bool(calls), "the restore to start")
        await e._release({0}, commit=False, deadline=Deadline(0.2))  # revoke: gives up waiting for it
        await e._assigned([TopicPartition("races.inbox", 0)])  # ... and the partition comes back
        first_go.set()
        await _until(lambda: 0 in e._restored, "partition 0 to be restored again", timeout=5)

    _run(tmp_path, test)


def test_a_stall_noticed_while_the_ownership_check_is_under_way_is_checked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ownership check that was in flight when the process froze may have committed before the freeze:
    it proves nothing about ownership after it. The rebuild must confirm again before restoring."""
    probes: list[threading.Event] = []

    def probe(*_: Any) -> None:
        go = threading.Event()
        probes.append(go)
        go.wait(10)

    monkeypatch.setattr(txn, "probe", probe)
    monkeypatch.setattr(Engine, "_group_offsets", lambda _self, _partitions: [])
    monkeypatch.setattr(Engine, "_start_restore", lambda _self, p, *, seek: restored.append(p))
    restored: list[int] = []

    async def test(e: Engine) -> None:
        e._stores[0] = MemoryStore()
        e._owned = {0}
        e.workers[0] = _worker(e, e._stores[0])  # type: ignore[arg-type]
        e._begin_rebuild("a commit failed")
        await _until(lambda: len(probes) == 1, "the ownership check")
        e._stalled_for = 8.0  # the watchdog saw the process frozen meanwhile ...
        assert e._check_stall()  # ... and the poll loop, on waking, asks before doing any work
        probes[0].set()  # the check committed (before the freeze, for all we know)
        await _until(lambda: len(probes) == 2 or not e._rebuilding, "the rebuild to go on")
        assert len(probes) == 2 and not restored, "restored after a check that may predate the freeze"
        probes[1].set()
        await _until(lambda: not e._rebuilding, "the rebuild to finish")
        assert restored == [0]

    _run(tmp_path, test)
