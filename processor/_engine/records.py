"""Engine records as values: records consumed and produced, and the invocation status row with its
wire encoding."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Message

from processor import schemas
from processor._engine.core import Failure


@dataclass(slots=True, kw_only=True)  # a value (not frozen only because a frozen init is slow: one per record)
class InRecord:
    """A consumed record, as the worker sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    @staticmethod
    def of(m: Message) -> InRecord:
        raw: Any = m.headers() or []
        headers = [(str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in raw]
        key, value = m.key(), m.value()
        return InRecord(topic=m.topic() or "", partition=m.partition() or 0, offset=m.offset() or 0,
                        key=key.encode() if isinstance(key, str) else key,
                        value=value.encode() if isinstance(value, str) else value, headers=headers)


@dataclass(slots=True, kw_only=True)  # a value, as InRecord
class OutRecord:
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)



class Status(enum.Enum):
    QUEUED = "queued"            # waiting behind another exclusive invocation of its key, or for a limit
    RUNNING = "running"          # has (or will get) a runtime in memory
    BACKING_OFF = "backing_off"  # failed with a retryable error; an invocation_retry timer restarts it
    PAUSED = "paused"            # diverged from its journal, or retries ran out; waits for a new deploy or an operator
    SUSPENDED = "suspended"      # evicted from memory while it waits on durable completions only
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED)


_MOVES: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.FAILED}),
    Status.RUNNING: frozenset({Status.RUNNING, Status.BACKING_OFF, Status.PAUSED, Status.SUSPENDED,
                               Status.COMPLETED, Status.FAILED}),
    Status.SUSPENDED: frozenset({Status.RUNNING, Status.FAILED}),
    Status.BACKING_OFF: frozenset({Status.RUNNING, Status.FAILED}),
    Status.PAUSED: frozenset({Status.RUNNING, Status.FAILED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(slots=True, kw_only=True)  # a value: never mutated (not frozen only because a frozen init is slow)
class InvocationRow:
    id: str
    service: str
    handler: str
    key: str | None
    status: Status
    input: bytes
    created_ms: int
    input_headers: dict[str, bytes] = field(default_factory=dict)
    source_topic: str | None = None
    source_partition: int = -1
    source_offset: int = -1
    attempt: int = 0
    retry_at_ms: int | None = None
    finished_ms: int | None = None
    inbox_seq: int | None = None
    result: bytes | None = None
    failure: Failure | None = None
    paused_reason: str | None = None
    caller_id: str | None = None
    caller_seq: int = -1
    caller_partition: int = -1
    notify: bool = False
    cancelled: bool = False
    idempotency_key: str | None = None

    @property
    def target(self) -> str:
        return f"{self.service}/{self.handler}"

    def moved(self, status: Status, **changes: Any) -> InvocationRow:
        """This row in `status`; raises IllegalTransition on a move the state machine forbids."""
        if status not in _MOVES[self.status]:
            raise IllegalTransition(f"invocation {self.id}: {self.status.value} -> {status.value}")
        if self.status in (Status.PAUSED, Status.QUEUED) and status is not self.status:
            changes.setdefault("paused_reason", None)  # why it paused or waited, not the row's life
        if self.status in (Status.BACKING_OFF, Status.PAUSED) and status is not self.status:
            changes.setdefault("failure", None)  # the last attempt's error, shown while it backs off or is paused
        return replace(self, status=status, **changes)

    def encode(self) -> bytes:
        return schemas.encode("Invocation", {
            "id": self.id, "service": self.service, "handler": self.handler, "key": self.key,
            "status": self.status.value, "input": self.input, "input_headers": self.input_headers,
            "source_topic": self.source_topic, "source_partition": self.source_partition,
            "source_offset": self.source_offset, "attempt": self.attempt,
            "retry_at_ms": self.retry_at_ms, "created_ms": self.created_ms,
            "finished_ms": self.finished_ms, "inbox_seq": self.inbox_seq, "result": self.result,
            "failure": None if self.failure is None else {"type": self.failure.type,
                                                         "message": self.failure.message},
            "paused_reason": self.paused_reason, "caller_id": self.caller_id, "caller_seq": self.caller_seq,
            "caller_partition": self.caller_partition, "notify": self.notify, "cancelled": self.cancelled,
            "idempotency_key": self.idempotency_key})

    @staticmethod
    def decode(data: bytes) -> InvocationRow:
        r = schemas.decode("Invocation", data)
        f = r["failure"]
        return InvocationRow(
            id=r["id"], service=r["service"], handler=r["handler"], key=r["key"],
            status=Status(r["status"]), input=r["input"], input_headers=r["input_headers"],
            source_topic=r["source_topic"], source_partition=r["source_partition"],
            source_offset=r["source_offset"], attempt=r["attempt"], retry_at_ms=r["retry_at_ms"],
            created_ms=r["created_ms"], finished_ms=r["finished_ms"], inbox_seq=r["inbox_seq"],
            result=r["result"], failure=None if f is None else Failure(type=f["type"], message=f["message"]),
            paused_reason=r["paused_reason"], caller_id=r["caller_id"], caller_seq=r["caller_seq"],
            caller_partition=r["caller_partition"], notify=r["notify"], cancelled=r["cancelled"],
            idempotency_key=r["idempotency_key"])
