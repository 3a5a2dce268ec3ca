"""State benchmark: restoring a partition's LMDB store from its compacted changelog.

N changelog-like records (key = b"S" + 8 unique bytes, ~50-byte values) are written to a 1-partition
compacted topic inside Kafka transactions (so the log holds commit markers, as the engine's does), then
`state.changelog.restore` reads them into an empty `PartitionStore` in this process.
"""

from __future__ import annotations

import os
import time
from typing import Any

from confluent_kafka import Producer

from benchmarks.harness import BenchContext, Row, benchmark
from processor.state.changelog import restore as restore_changelog
from processor.state.store import PartitionStore

TXN_BATCH = 10_000
VALUE_BYTES = 50


def _produce(ctx: BenchContext, topic: str, n: int) -> float:
    p = Producer(ctx.config(**{"transactional.id": ctx.unique("changelog"), "linger.ms": 5,
                               "batch.num.messages": 10_000, "queue.buffering.max.messages": 200_000,
                               "compression.type": "none"}))
    p.init_transactions(30)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    filler = os.urandom(VALUE_BYTES - 8)
    t0 = time.monotonic()
    for start in range(0, n, TXN_BATCH):
        ctx.check()
        p.begin_transaction()
        for i in range(start, min(n, start + TXN_BATCH)):
            key = b"S" + i.to_bytes(8, "big")
            while True:
                try:
                    p.produce(topic, i.to_bytes(8, "big") + filler, key, partition=0, on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.01)
        p.commit_transaction(60)  # flushes first
        if errors:
            raise RuntimeError(f"produce to {topic}: {errors[:3]}")
    return n / (time.monotonic() - t0)


@benchmark("restore", timeout_s=600)
def restore(ctx: BenchContext) -> list[Row]:
    n = ctx.pick(1_000_000, 100_000)
    topic = ctx.create_topic("changelog", 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                                              "segment.ms": "3600000"})
    ctx.log(f"produce {n} changelog records in transactions of {TXN_BATCH}")
    rate = _produce(ctx, topic, n)
    store = PartitionStore.open(ctx.scratch / "store")
    try:
        ctx.log("restore into an empty store")
        t0 = time.monotonic()
        stats = restore_changelog(store, consumer_config=ctx.config(), topic=topic, partition=0,
                                  deadline_s=max(30.0, ctx.remaining() - 30))
        secs = time.monotonic() - t0
        rows_in_store = store.count()
    finally:
        store.close()
    if stats.records != n or rows_in_store != n:
        raise AssertionError(f"restore of {n} distinct keys applied {stats.records} records, store holds "
                             f"{rows_in_store} rows")
    ctx.log(f"  {n / secs:,.0f} records/s, {secs:.1f} s")
    du = sum(f.stat().st_size for f in (ctx.scratch / "store").iterdir())
    return [
        ctx.row("records_per_s", n / secs, "records/s",
                notes=f"{n:,} records (key 9 B, value {VALUE_BYTES} B, {n // TXN_BATCH} transactions) into an "
                      f"empty LMDB PartitionStore, 1 partition, in the benchmark process; store.count() = {n:,}; "
                      f"store file {du / 2**20:.0f} MiB; changelog offsets 0..{stats.end_offset}"),
        ctx.row("seconds", secs, "s", notes=f"restore() wall time; written at {rate:,.0f} records/s beforehand"),
    ]
