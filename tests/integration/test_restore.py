"""Restore of a partition store from a real compacted, transactional changelog."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import OffsetSpec

from processor.state.changelog import RestoreError, restore
from processor.state.keys import state_key, timer_key
from processor.state.store import PartitionStore
from tests.kafka_support import Kafka

pytestmark = pytest.mark.integration

PARTITION = 1
Write = tuple[bytes, bytes | None]


@pytest.fixture
def changelog(kafka: Kafka) -> str:
    return kafka.create_topic(kafka.unique("changelog"), partitions=2,
                              config={"cleanup.policy": "compact"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    s = PartitionStore.open(tmp_path / "store")
    yield s
    s.close()


def produce_txn(p: Producer, topic: str, writes: Sequence[Write], *, commit: bool = True,
                partition: int = PARTITION) -> None:
    p.begin_transaction()
    for i, (key, value) in enumerate(writes):
        p.produce(topic, key=key, value=value, partition=partition)
        if i % 10_000 == 0:
            p.poll(0)
    if commit:
        p.commit_transaction(60)
    else:
        p.abort_transaction(60)


def log_end(kafka: Kafka, topic: str, partition: int = PARTITION) -> int:
    tp = TopicPartition(topic, partition)
    futures = kafka.admin.list_offsets({tp: OffsetSpec.latest()},
                                       isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=10)
    return int(next(iter(futures.values())).result(timeout=15).offset)


def expected(*batches: Sequence[Write]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for batch in batches:
        for key, value in batch:
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
    return out


def contents(s: PartitionStore) -> dict[bytes, bytes]:
    return dict(s.scan(b""))


def skey(i: int) -> bytes:
    return state_key("obj", f"k{i}", "v")


def test_restore_applies_committed_writes_only_up_to_the_log_end(
        kafka: Kafka, changelog: str, store: PartitionStore) -> None:
    first = [(skey(i), b"v%d" % i) for i in range(100)] + [(timer_key(1000 + i, "inv", i), b"t") for i in range(5)]
    aborted = [(skey(i), b"ABORTED") for i in range(0, 100, 3)] + [(skey(999), b"ABORTED")]
    second: list[Write] = [(skey(i), None) for i in range(0, 100, 5)] + [(skey(7), b"seven'")]
    with kafka.transactional_producer() as p:
        produce_txn(p, changelog, first)
        produce_txn(p, changelog, aborted, commit=False)
        produce_txn(p, changelog, second)
        produce_txn(p, changelog, [(skey(1), b"other partition")], partition=0)
    progress: list[tuple[int, int, float]] = []

    stats = restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                    batch_size=37, deadline_s=60, progress=lambda *a: progress.append(a))

    assert contents(store) == expected(first, second)
    end = log_end(kafka, changelog)
    assert store.changelog_offset() == end
    assert stats.start_offset == 0
    assert stats.end_offset == end
    assert stats.records == len(first) + len(second)
    assert progress[-1][:2] == (stats.records, 0)


def test_a_second_restore_reads_only_the_tail(kafka: Kafka, changelog: str, store: PartitionStore) -> None:
    head = [(skey(i), b"head") for i in range(50)]
    tail: list[Write] = [(skey(i), b"tail") for i in range(40, 60)] + [(skey(0), None)]
    with kafka.transactional_producer() as p:
        produce_txn(p, changelog, head)
        first = restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                        deadline_s=60)
        assert first.records == len(head)
        produce_txn(p, changelog, tail)
        produce_txn(p, changelog, [(skey(1000), b"aborted")], commit=False)

    second = restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                     deadline_s=60)

    assert second.records == len(tail)
    assert second.start_offset == first.end_offset
    assert contents(store) == expected(head, tail)
    assert store.changelog_offset() == log_end(kafka, changelog)
    again = restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                    deadline_s=60)
    assert again.records == 0
    assert again.end_offset == store.changelog_offset()


def test_a_store_ahead_of_the_log_end_is_cleared_and_fully_restored(
        kafka: Kafka, changelog: str, store: PartitionStore, caplog: pytest.LogCaptureFixture) -> None:
    writes = [(skey(i), b"v") for i in range(10)]
    with kafka.transactional_producer() as p:
        produce_txn(p, changelog, writes)
    store.apply([(skey(500), b"from an older changelog")], 10_000)

    stats = restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                    deadline_s=60)

    assert stats.start_offset == 0
    assert stats.records == len(writes)
    assert contents(store) == expected(writes)
    assert store.changelog_offset() == log_end(kafka, changelog)
    assert any("clearing the store" in r.getMessage() for r in caplog.records)


def test_an_empty_changelog_restores_nothing(kafka: Kafka, changelog: str, store: PartitionStore) -> None:
    stats = restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                    deadline_s=30)
    assert (stats.records, stats.end_offset) == (0, 0)
    assert store.changelog_offset() == 0


def test_restore_behind_an_open_transaction_fails_at_the_deadline(
        kafka: Kafka, changelog: str, store: PartitionStore) -> None:
    committed = [(skey(i), b"ok") for i in range(20)]
    with kafka.transactional_producer() as p:
        produce_txn(p, changelog, committed)
        p.begin_transaction()
        p.produce(changelog, key=skey(100), value=b"in flight", partition=PARTITION)
        p.flush(30)
        t0 = time.monotonic()
        try:
            with pytest.raises(RestoreError, match=rf"{changelog}\[{PARTITION}\].*position \d+, target \d+"):
                restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                        deadline_s=3)
        finally:
            p.abort_transaction(30)
        assert time.monotonic() - t0 < 15
    assert contents(store) == expected(committed), "what was read before the deadline stays applied"


def test_restore_rate_for_200k_small_records(kafka: Kafka, changelog: str, store: PartitionStore) -> None:
    n = 200_000
    writes = [(skey(i), b"value-%06d" % i) for i in range(n)]
    with kafka.transactional_producer(**{"linger.ms": 20, "batch.size": 1_000_000}) as p:
        for i in range(0, n, 50_000):
            produce_txn(p, changelog, writes[i:i + 50_000])
    reports: list[Any] = []

    stats = restore(store, consumer_config=kafka.config(), topic=changelog, partition=PARTITION,
                    deadline_s=300, progress=lambda *a: reports.append(a))

    assert stats.records == n
    assert store.count() == n
    assert store.changelog_offset() == log_end(kafka, changelog)
    rate = stats.records / stats.seconds
    print(f"\nrestore rate: {stats.records} records in {stats.seconds:.2f}s = {rate:,.0f} records/s "
          f"({len(reports)} progress reports)")
