"""The Kafka half of a commit cycle: one transaction, run on a producer's lane (blocking calls).

Every transaction carries the consumer-group metadata (KIP-447), also when no input offset moved:
the broker checks the member's generation in ``TxnOffsetCommit``, and that check is what stops an
instance whose partitions moved while it was stalled from committing anything.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from processor._engine import faults
from processor._engine.metrics import CommitTimings, Stopwatch
from processor._engine.partition import CycleSlice
from processor._engine.ports import TransactionalProducer
from processor.state.keys import META

# The broker says this member is not (or no longer) the group member that owns these partitions.
NOT_OWNER_CODES = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                             KafkaError.FENCED_INSTANCE_ID, KafkaError.REBALANCE_IN_PROGRESS})
# The producer's epoch is gone: fenced by a newer producer with our transactional.id, or bumped by the
# broker when it aborted a transaction of ours that outlived transaction.timeout.ms.
PRODUCER_GONE_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                 KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.INVALID_PRODUCER_ID_MAPPING,
                                 KafkaError.TRANSACTION_COORDINATOR_FENCED})


class Outcome(enum.Enum):
    """What a failed transaction means for the engine (all of them: rebuild from the last commit)."""

    ABORTABLE = "abortable"    # abort it and go on with the same producer
    NOT_OWNER = "not_owner"    # the group moved on: abort, then wait for ownership to be confirmed
    PRODUCER_LOST = "producer_lost"  # the producer cannot be used again: start a new one


class TxnFailed(Exception):
    def __init__(self, message: str, outcome: Outcome, code: int | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.code = code


def classify(err: KafkaError) -> Outcome:
    code = err.code()
    if code in NOT_OWNER_CODES:
        return Outcome.NOT_OWNER
    if code in PRODUCER_GONE_CODES or err.fatal():
        return Outcome.PRODUCER_LOST
    return Outcome.ABORTABLE


def failure(e: KafkaException, during: str) -> TxnFailed:
    err: KafkaError = e.args[0]
    return TxnFailed(f"{during}: {err.str()}", classify(err), err.code())


@dataclass(slots=True)
class Written:
    """Where a transaction's changelog records landed, per changelog partition."""

    first: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)  # last offset + 1

    def add(self, partition: int, offset: int) -> None:
        if offset < self.first.get(partition, offset + 1):
            self.first[partition] = offset
        if offset + 1 > self.end.get(partition, 0):
            self.end[partition] = offset + 1


def commit(producer: TransactionalProducer, *, changelog: str, slices: Sequence[CycleSlice],
           offsets: list[TopicPartition], group: object, timings: CommitTimings,
           flush_timeout: float) -> Written:
    """Produce every slice's changelog records and outputs, then send `offsets` with the group
    metadata and commit. Raises :class:`TxnFailed` (the transaction is then still open or failed;
    the caller aborts or replaces the producer)."""
    written = Written()
    errors: list[tuple[KafkaError, str | None]] = []

    def on_changelog(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append((err, msg.topic()))
        else:
            written.add(msg.partition() or 0, msg.offset() or 0)

    def on_output(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append((err, msg.topic()))

    # Delivery reports only where they tell something: the first and last changelog record of each
    # partition (where this cycle's records landed). A record that fails puts the transaction in
    # the abortable state, so its commit fails: no per-record callback is needed to notice. The first
    # output to each topic reports too: a topic that refuses us (no Write ACL) then says so.
    watch = Stopwatch(timings)
    reporting: set[str] = set()
    during = "begin_transaction"
    try:
        producer.begin_transaction()
        during = "produce"
        n = 0
        for s in slices:
            last = len(s.overlay) - 1
            for i, (k, v) in enumerate(s.overlay.items()):
                produce(producer, changelog, s.partition, k, v, None, on_changelog if i == 0 or i == last else None)
            n += last + 1
            for r in s.outputs:
                first = r.topic not in reporting
                if first:
                    reporting.add(r.topic)
                produce(producer, r.topic, r.partition, r.key, r.value, r.headers, on_output if first else None)
            n += len(s.outputs)
        timings.add_records(n)
        watch.lap("produce")
        during = "flush"
        left = producer.flush(flush_timeout)
        if errors:
            err, topic = errors[0]
            raise TxnFailed(f"delivery to {topic} failed: {err.str()}", classify(err), err.code())
        if left:
            raise TxnFailed(f"{left} records undelivered after {flush_timeout:.0f}s", Outcome.ABORTABLE)
        watch.lap("flush")
        during = "send_offsets_to_transaction"
        faults.point("before_send_offsets")
        producer.send_offsets_to_transaction(offsets, group, flush_timeout)
        watch.lap("send_offsets")
        faults.point("before_kafka_commit")
        if faults.armed("before_work_commit") and any(_holds_work(s) for s in slices):
            faults.point("before_work_commit")  # the same, counting only cycles with invocations' work
        during = "commit_transaction"
        producer.commit_transaction(flush_timeout)
        watch.lap("commit")
    except KafkaException as e:
        raise failure(e, during) from None
    faults.point("after_kafka_commit")
    return written


def _holds_work(s: CycleSlice) -> bool:
    """Outputs or store writes other than engine counters (a cycle that only holds a partition's step
    generation does not count)."""
    return bool(s.outputs) or any(k[:1] != META for k, _ in s.overlay.items())


def probe(producer: TransactionalProducer, offsets: list[TopicPartition], group: object,
          timeout: float) -> None:
    """An empty transaction that only re-commits `offsets` (the committed ones) with the group
    metadata: it commits only if this member still owns its partitions at that generation."""
    try:
        producer.begin_transaction()
        producer.send_offsets_to_transaction(offsets, group, timeout)
        producer.commit_transaction(timeout)
    except KafkaException as e:
        raise failure(e, "ownership check") from None


def abort(producer: TransactionalProducer, timeout: float) -> None:
    try:
        producer.abort_transaction(timeout)
    except KafkaException as e:
        raise failure(e, "abort_transaction") from None


def produce(p: TransactionalProducer, topic: str, partition: int | None, key: bytes | None,
            value: bytes | None,
            headers: Iterable[tuple[str, bytes]] | None,
            cb: Callable[[KafkaError | None, Message], None] | None) -> None:
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if cb is not None:
        kwargs["on_delivery"] = cb
    if partition is not None:
        kwargs["partition"] = partition
    if headers:
        kwargs["headers"] = list(headers)
    while True:
        try:
            p.produce(topic, **kwargs)
            return
        except BufferError:
            p.poll(0.05)  # local queue full: let deliveries drain
