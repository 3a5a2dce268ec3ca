"""What the commit cycle needs from Kafka's transactional producer, and an in-memory twin of it.

``TransactionalProducer`` is the slice of ``confluent_kafka.Producer`` that ``txn`` calls: the
engine passes a real producer; unit tests (and, later, the testing kit) pass a
``MemoryTransactionalProducer`` writing into a ``MemoryLog``. The twin keeps Kafka's rules that the
cycle relies on — offsets assigned as records are appended, a commit or abort marker taking an
offset of every partition the transaction wrote, delivery reports carrying where a record landed,
``read_committed`` readers seeing only committed records, offsets committed with the transaction
— and can be told to fail a call, as a broker would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from processor._engine.routing import partition_for_key


class TransactionalProducer(Protocol):
    """The calls ``processor._engine.txn`` makes on a transactional producer."""

    def begin_transaction(self) -> None: ...
    def produce(self, topic: str, *, value: bytes | None = ..., key: bytes | None = ..., partition: int = ...,
                on_delivery: Callable[[KafkaError | None, Message], None] | None = ...,
                headers: list[tuple[str, str | bytes | None]] | None = ...) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def send_offsets_to_transaction(self, positions: list[TopicPartition], group_metadata: Any,
                                    timeout: float) -> None: ...
    def commit_transaction(self, timeout: float) -> None: ...
    def abort_transaction(self, timeout: float) -> None: ...


@dataclass(slots=True)
class LogRecord:
    """One record of a ``MemoryLog`` partition; `state` is "open", "committed" or "aborted"."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    state: str = "open"


@dataclass(slots=True)
class _Report:
    """What a delivery callback gets as its message (the calls ``txn`` makes on it)."""

    record: LogRecord

    def topic(self) -> str:
        return self.record.topic

    def partition(self) -> int:
        return self.record.partition

    def offset(self) -> int:
        return self.record.offset


@dataclass
class MemoryLog:
    """Topics as lists of records per partition (a transaction marker takes an offset and holds no
    record: it is a ``None`` slot), and the offsets committed per consumer group."""

    partitions: dict[str, int] = field(default_factory=dict)  # topic -> partition count (default 1)
    logs: dict[tuple[str, int], list[LogRecord | None]] = field(default_factory=dict)
    group_offsets: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)

    def append(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
               headers: list[tuple[str, bytes]]) -> LogRecord:
        if partition is None:
            partition = partition_for_key(key, self.partitions.get(topic, 1)) if key is not None else 0
        log = self.logs.setdefault((topic, partition), [])
        r = LogRecord(topic=topic, partition=partition, offset=len(log), key=key, value=value, headers=headers)
        log.append(r)
        return r

    def mark(self, topic: str, partition: int) -> None:
        """A transaction marker: one offset, no record."""
        self.logs.setdefault((topic, partition), []).append(None)

    def read_committed(self, topic: str) -> list[LogRecord]:
        """Every committed record of `topic`, partition by partition, in offset order."""
        return [r for (t, _), log in sorted(self.logs.items(), key=lambda kv: kv[0]) if t == topic
                for r in log if r is not None and r.state == "committed"]

    def end(self, topic: str, partition: int) -> int:
        return len(self.logs.get((topic, partition), []))


@dataclass
class MemoryTransactionalProducer:
    """A transactional producer writing into `log` for consumer group `group`. `fail` names a call
    (``"flush"``, ``"send_offsets_to_transaction"``, ``"commit_transaction"``) to raise a Kafka error
    with `fail_code` from, once."""

    log: MemoryLog
    group: str
    fail: str | None = None
    fail_code: int = KafkaError._FENCED
    _open: list[LogRecord] = field(default_factory=list)
    _reports: list[tuple[Callable[[KafkaError | None, Message], None], LogRecord]] = field(default_factory=list)
    _offsets: list[TopicPartition] = field(default_factory=list)
    _in_txn: bool = False

    def _maybe_fail(self, call: str) -> None:
        if self.fail == call:
            self.fail = None
            raise KafkaException(KafkaError(self.fail_code, f"{call} failed (twin)"))

    def begin_transaction(self) -> None:
        if self._in_txn:
            raise KafkaException(KafkaError(KafkaError._STATE, "a transaction is already open"))
        self._in_txn = True

    def produce(self, topic: str, *, value: bytes | None = None, key: bytes | None = None, partition: int = -1,
                on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
                headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        if not self._in_txn:
            raise KafkaException(KafkaError(KafkaError._STATE, "produce outside a transaction"))
        hs = [(k, v.encode() if isinstance(v, str) else v or b"") for k, v in headers or []]
        r = self.log.append(topic, None if partition < 0 else partition, key, value, hs)
        self._open.append(r)
        if on_delivery is not None:
            self._reports.append((on_delivery, r))

    def poll(self, timeout: float) -> int:
        reports, self._reports = self._reports, []
        for cb, r in reports:
            cb(None, _Report(r))  # type: ignore[arg-type]  # the calls txn makes on a Message
        return len(reports)

    def flush(self, timeout: float) -> int:
        self._maybe_fail("flush")
        self.poll(0)
        return 0

    def send_offsets_to_transaction(self, positions: list[TopicPartition], group_metadata: Any,
                                    timeout: float) -> None:
        self._maybe_fail("send_offsets_to_transaction")
        self._offsets = list(positions)

    def commit_transaction(self, timeout: float) -> None:
        self._maybe_fail("commit_transaction")
        committed = self.log.group_offsets.setdefault(self.group, {})
        for tp in self._offsets:
            committed[(tp.topic, tp.partition)] = tp.offset
        self._end("committed")

    def abort_transaction(self, timeout: float) -> None:
        self._end("aborted")

    def _end(self, state: str) -> None:
        touched = {(r.topic, r.partition) for r in self._open}
        for r in self._open:
            r.state = state
        for topic, partition in sorted(touched):
            self.log.mark(topic, partition)
        self._open, self._reports, self._offsets, self._in_txn = [], [], [], False
