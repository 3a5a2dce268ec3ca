"""The fence a zombie meets, on the real broker: a transaction carrying a stale group generation
cannot commit; one without group metadata is not checked at all (why every cycle sends it)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from processor._engine import txn
from processor._engine.cycle import fence_offsets
from processor._engine.partition import CycleSlice
from processor.state.overlay import Overlay
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.integration


def _member(kafka: Kafka, group: str, topic: str, instance: str) -> Consumer:
    c = Consumer(kafka.config(**{"group.id": group, "group.instance.id": instance, "enable.auto.commit": False,
                                 "session.timeout.ms": 6000, "partition.assignment.strategy": "range"}))
    c.subscribe([topic])
    return c


def _poll_until(consumers: list[Consumer], cond: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for c in consumers:
            c.poll(0.1)


def test_a_stale_generation_cannot_commit_even_a_transaction_that_moved_no_offset(kafka: Kafka) -> None:
    topic, out = kafka.create_topic(partitions=2), kafka.create_topic(partitions=1)
    group = kafka.unique("g")
    a = _member(kafka, group, topic, "a")
    b: Consumer | None = None
    try:
        _poll_until([a], lambda: len(a.assignment()) == 2, "a to own both partitions")
        a.commit(offsets=[TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)], asynchronous=False)
        stale = a.consumer_group_metadata()  # what an instance cached at its assignment
        b = _member(kafka, group, topic, "b")
        _poll_until([a, b], lambda: len(b.assignment()) == 1 and len(a.assignment()) == 1, "the rebalance")

        with kafka.transactional_producer() as zombie:
            # What the engine sends in a cycle that consumed nothing: the offsets the group holds.
            with pytest.raises(txn.TxnFailed) as failed:
                txn.probe(zombie, [TopicPartition(topic, 0, 0)], stale, 30)
            assert failed.value.outcome is txn.Outcome.NOT_OWNER
            txn.abort(zombie, 30)

            # The old trade: skip send_offsets when no offset moved. Nothing checks the group then.
            zombie.begin_transaction()
            zombie.produce(out, key=b"k", value=b"committed by a zombie")
            zombie.commit_transaction(30)
        wait_until(lambda: [r.value for r in kafka.drain(out)] == [b"committed by a zombie"], 30,
                   "the unfenced record to be visible to read_committed")
    finally:
        a.close()
        if b is not None:
            b.close()


def _slice(partition: int, offsets: dict[str, int]) -> CycleSlice:
    return CycleSlice(partition=partition, overlay=Overlay(), outputs=[], offsets=offsets, releases=[])


class _Worker:
    def __init__(self, committed: dict[str, int]) -> None:
        self._committed = committed

    def committed_offsets(self) -> dict[str, int]:
        return dict(self._committed)


def test_a_cycle_without_new_input_resends_the_offsets_the_group_holds() -> None:
    workers: list[Any] = [_Worker({"in": 5, "app.inbox": 9}), _Worker({"in": 2})]
    offsets = fence_offsets(workers, [_slice(0, {}), _slice(1, {"in": 3})], "app.inbox")
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets) == [
        ("app.inbox", 0, 9), ("in", 0, 5), ("in", 1, 3)]


def test_a_partition_with_nothing_ever_committed_still_sends_an_offset() -> None:
    offsets = fence_offsets([_Worker({})], [_slice(2, {})], "app.inbox")  # type: ignore[list-item]
    assert [(tp.topic, tp.partition, tp.offset) for tp in offsets] == [("app.inbox", 2, 0)]
