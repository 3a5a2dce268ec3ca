"""Records on a bound topic that landed on a partition that does not own their key.

The engine routes keys with Kafka's Java murmur2 partitioner; a producer that partitions otherwise
(librdkafka's default ``consistent_random``, a custom partitioner) puts key ``k`` elsewhere. Processing
it there would split the key's state, so the partition it landed on forwards it, as a ``forward``
inbox command in the transaction that commits its offset, to the partition that owns the key, which
processes it as if it had arrived there (same checks, DLQ reasons and invocation id).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from processor._engine.commands import CommandKind, InboxCommand
from processor._engine.routing import partition_for_key

log = logging.getLogger("processor.routing")


def owner(key: bytes | None, keyed: bool, landed: int, partitions: int) -> int | None:
    """The partition a bound record must be forwarded to, or None if it is processed where it landed
    (services have no owner; a record without a key is dead-lettered where it landed)."""
    if not keyed or key is None:
        return None
    p = partition_for_key(key, partitions)
    return None if p == landed else p


def forward_command(*, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                    headers: Sequence[tuple[str, bytes]]) -> bytes:
    """The ``forward`` inbox command carrying the record at (topic, partition, offset)."""
    return InboxCommand(kind=CommandKind.FORWARD, source_topic=topic, source_partition=partition,
                        source_offset=offset, record_key=key, payload=value, headers=list(headers)).encode()


class ForwardStats:
    """Records forwarded per bound topic in this process; the first one of a topic logs a warning."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, topic: str, key: bytes, landed: int, owner: int, inbox: str) -> None:
        if not self.counts[topic]:
            log.warning(
                "topic %s: a record with key %r arrived on partition %d, but partition %d owns that key: its "
                "producer does not use Kafka's default (murmur2) partitioner. Records like it are forwarded "
                "to their key's partition through %s (one more hop each). To skip the hop, produce with "
                "partitioner=murmur2_random (confluent-kafka/librdkafka) or a Java client's default "
                "partitioner. (Warned once per topic.)", topic, key, landed, owner, inbox)
        self.counts[topic] += 1


FORWARDS = ForwardStats()
"""This process's count; every partition worker adds to it (a worker's own count would reset on
every rebalance, and the warning would repeat per partition)."""
