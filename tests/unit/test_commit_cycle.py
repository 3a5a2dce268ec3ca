"""The commit cycle's four steps over an in-memory twin of the transactional producer.

Real partition workers run a counter; ``Cycle`` seals them, writes one transaction through a
``MemoryTransactionalProducer`` into a ``MemoryLog``, applies the committed overlays to the stores
and releases. What a ``read_committed`` reader and the group see is checked after a cycle that
commits and after one whose commit fails (the broker's fence, as the twin raises it).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

import processor as p
from processor._engine import txn
from processor._engine.cycle import Cycle
from processor._engine.metrics import CommitTimings
from processor._engine.partition import PartitionWorker
from processor._engine.ports import MemoryLog, MemoryTransactionalProducer
from processor._engine.records import InRecord
from processor.state import keys
from processor.state.memory import MemoryStore
from processor.state.store import Store

PARTITIONS = 2
CHANGELOG = "count.changelog"


def _app() -> p.App:
    app = p.App("count", partitions=PARTITIONS)
    counter = app.virtual_object("counter")

    @counter.handler()
    async def count(ctx: p.ObjectContext, ev: dict[str, Any]) -> None:
        n = (await ctx.get("n") or 0) + 1
        ctx.set("n", n)
        ctx.emit("out", {"key": ctx.key, "n": n}, key=ctx.key)

    app.subscribe("in", count)
    return app


class Partitions:
    """Two partition workers over memory stores, fed a key per partition."""

    def __init__(self, app: p.App, pool: ThreadPoolExecutor) -> None:
        self.app, self.pool = app, pool
        self.stores: dict[int, Store] = {n: MemoryStore() for n in range(PARTITIONS)}
        self.load(0)

    def load(self, committed: int) -> None:
        """New workers from the stores, consuming from offset `committed` (as after a rebuild)."""
        self.workers = {n: PartitionWorker(app=self.app, partition=n, partitions_total=PARTITIONS,
                                           store=self.stores[n], step_executor=self.pool, on_work=lambda: None)
                        for n in range(PARTITIONS)}
        self.fed = {n: committed for n in range(PARTITIONS)}
        for w in self.workers.values():
            w.set_committed({"in": committed} if committed else {})
            w.load()

    def feed(self, events: int) -> None:
        for n, w in self.workers.items():
            for _ in range(events):
                w.on_input(InRecord(topic="in", partition=n, offset=self.fed[n], key=_key_on(n),
                                    value=orjson.dumps({})), self.app.bindings["in"])
                self.fed[n] += 1

    def count(self, n: int) -> int | None:
        raw = self.stores[n].get(keys.state_key_under(keys.state_prefix("counter", _key_on(n).decode()), "n"))
        return None if raw is None else int(orjson.loads(raw))


def _key_on(partition: int) -> bytes:
    """A key that routes to `partition` (murmur2, as the producers do)."""
    from processor._engine.routing import partition_for_key

    return next(k for k in (f"k{i}".encode() for i in range(100)) if partition_for_key(k, PARTITIONS) == partition)


def _cycle(ps: Partitions, producer: MemoryTransactionalProducer, log: MemoryLog) -> Cycle:
    """Seal and transact; raises txn.TxnFailed when the transaction fails."""
    cycle = Cycle.seal(list(ps.workers.values()), ps.app.inbox_topic)
    written = cycle.transact(producer, changelog=CHANGELOG, group=None, timings=CommitTimings(), flush_timeout=1)

    def read_tail(store: Store, partition: int) -> int:
        records = [r for r in log.read_committed(CHANGELOG)
                   if r.partition == partition and r.offset >= store.changelog_offset()]
        store.apply([(r.key or b"", r.value) for r in records], log.end(CHANGELOG, partition))
        return len(records)

    cycle.apply(written, ps.stores, gap_allowed=1, read_tail=read_tail)
    cycle.release(ps.workers)
    return cycle


def _outputs(log: MemoryLog) -> list[tuple[str, int]]:
    return sorted((o["key"], o["n"]) for o in (orjson.loads(r.value or b"") for r in log.read_committed("out")))


def _counted(events: int) -> list[tuple[str, int]]:
    """The outputs of `events` events counted once on each partition's key."""
    return sorted((_key_on(n).decode(), i) for n in range(PARTITIONS) for i in range(1, events + 1))


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def test_a_cycle_commits_outputs_state_and_offsets_together_and_the_stores_take_its_changelog(
        pool: ThreadPoolExecutor) -> None:
    async def main() -> None:
        log = MemoryLog(partitions={"out": PARTITIONS})
        ps = Partitions(_app(), pool)
        ps.feed(3)
        _cycle(ps, MemoryTransactionalProducer(log, "count"), log)
        assert _outputs(log) == _counted(3)
        assert log.group_offsets["count"] == {("in", 0): 3, ("in", 1): 3}
        for n in range(PARTITIONS):
            assert ps.count(n) == 3
            assert ps.stores[n].changelog_offset() == log.end(CHANGELOG, n) - 1, "up to the commit marker"
            assert not ps.workers[n].has_work()
    asyncio.run(main())


def test_a_cycle_whose_commit_is_fenced_leaves_nothing_visible_and_the_next_one_reads_past_its_records(
        pool: ThreadPoolExecutor) -> None:
    async def main() -> None:
        log = MemoryLog(partitions={"out": PARTITIONS})
        ps = Partitions(_app(), pool)
        ps.feed(2)
        _cycle(ps, MemoryTransactionalProducer(log, "count"), log)
        ps.feed(2)
        fenced = MemoryTransactionalProducer(log, "count", fail="commit_transaction")
        with pytest.raises(txn.TxnFailed):
            _cycle(ps, fenced, log)
        txn.abort(fenced, 1)
        assert len(_outputs(log)) == 2 * PARTITIONS, "the fenced cycle's outputs are not read_committed"
        assert log.group_offsets["count"] == {("in", 0): 2, ("in", 1): 2}

        ps.load(2)  # the engine rebuilds: new workers from the stores, input again from the committed offsets
        ps.feed(2)
        _cycle(ps, MemoryTransactionalProducer(log, "count"), log)
        assert _outputs(log) == _counted(4), "each event counted once"
        assert log.group_offsets["count"] == {("in", 0): 4, ("in", 1): 4}
        assert [ps.count(n) for n in range(PARTITIONS)] == [4, 4]
    asyncio.run(main())
