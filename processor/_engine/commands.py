"""The commands on ``<app>.inbox`` (Avro ``InboxCommand``) as a dataclass and an enum.

Handlers' calls, sends and responses, forwarded records and the Client all speak to a partition
through these; ``Messaging.on_command`` dispatches on ``kind``.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from typing import Any

from processor import schemas
from processor._engine.core import Failure


class CommandKind(enum.StrEnum):
    INVOKE = "invoke"                        # start an invocation (a call, a send, a Client)
    RESPONSE = "response"                    # a callee's outcome, to its caller's pending call
    RESOLVE_AWAKEABLE = "resolve_awakeable"
    REJECT_AWAKEABLE = "reject_awakeable"
    ATTACH = "attach"                        # publish an invocation's outcome when it has one
    CANCEL = "cancel"
    KILL = "kill"
    FORWARD = "forward"                      # a bound record that landed on a partition not owning its key
    PURGE = "purge"                          # an operator: forget a finished invocation now
    RETRY = "retry"                          # an operator: run a backing-off or paused invocation now
    RESOLVE_PROMISE = "resolve_promise"      # in the schema, not handled (dead-lettered)
    REJECT_PROMISE = "reject_promise"


@dataclass(slots=True, kw_only=True)
class InboxCommand:
    """One inbox command. ``kind`` is a :class:`CommandKind`, or the string of a kind this build
    does not know (a newer writer's): such a command is dead-lettered."""

    kind: str
    invocation_id: str | None = None
    service: str | None = None
    handler: str | None = None
    key: str | None = None
    payload: bytes | None = None
    idempotency_key: str | None = None
    caller_id: str | None = None
    caller_seq: int = -1
    caller_partition: int = -1
    seq: int = -1
    failure: Failure | None = None
    target_id: str | None = None
    notify: bool = False
    execute_at_ms: int | None = None
    source_topic: str | None = None
    source_partition: int = -1
    source_offset: int = -1
    record_key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        f = self.failure
        return schemas.encode("InboxCommand", {
            "kind": str(self.kind), "invocation_id": self.invocation_id, "service": self.service,
            "handler": self.handler, "key": self.key, "payload": self.payload,
            "idempotency_key": self.idempotency_key, "caller_id": self.caller_id, "caller_seq": self.caller_seq,
            "caller_partition": self.caller_partition, "seq": self.seq,
            "failure": None if f is None else {"type": f.type, "message": f.message},
            "target_id": self.target_id, "notify": self.notify, "execute_at_ms": self.execute_at_ms,
            "source_topic": self.source_topic, "source_partition": self.source_partition,
            "source_offset": self.source_offset, "record_key": self.record_key,
            "headers": [{"name": n, "value": v} for n, v in self.headers]})

    @staticmethod
    def decode(data: bytes) -> InboxCommand:
        """Raises ``schemas.SchemaError`` for bytes that are no inbox command."""
        r: dict[str, Any] = schemas.decode("InboxCommand", data)
        f = r.pop("failure")
        headers = r.pop("headers")
        kind = r.pop("kind")
        with contextlib.suppress(ValueError):  # a kind this build does not know: dispatch dead-letters it
            kind = CommandKind(kind)
        return InboxCommand(kind=kind, failure=None if f is None else Failure(type=f["type"], message=f["message"]),
                            headers=[(h["name"], h["value"]) for h in headers], **r)
