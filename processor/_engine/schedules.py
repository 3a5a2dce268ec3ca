"""Ensuring the schedules declared in code: at start, every instance sends one ``ensure`` command per
schedule to the schedule's partition of ``<app>.inbox``. ``ensure`` changes nothing when the same
definition already runs, so many instances and restarts start it once; a changed definition
replaces the running one. The Client sends the same commands (``Client.schedule``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from processor._app import App
from processor._engine import kafka as kio
from processor._engine import routing
from processor._engine.commands import CommandKind, InboxCommand
from processor._errors import ConfigurationError, ProcessorError
from processor._schedule import ENSURE, ScheduleDef
from processor._serde import JsonSerde

log = logging.getLogger("processor.schedule")


def ensure_command(d: ScheduleDef, partitions: int, *, notify: bool = False) -> tuple[int, InboxCommand]:
    """The ``ensure`` command of `d` and the partition it goes to (its name's). Each command is a new
    invocation (a random seed): deduplication is by definition, in the handler, not by id, so
    ensuring A, then B, then A again sets A."""
    p = routing.target_partition(d.name, "", partitions)
    service, _, handler = ENSURE.partition("/")
    inv = routing.invocation_id(p, "client", ENSURE, d.name, uuid.uuid4().hex)
    return p, InboxCommand(kind=CommandKind.INVOKE, invocation_id=inv, service=service, handler=handler,
                           key=d.name, payload=JsonSerde().serialize(d.to_json()), notify=notify)


def ensure_static(client: Mapping[str, Any], app: App, partitions: int, timeout_s: float = 30.0) -> None:
    """Send ``ensure`` for each schedule of `app` and wait until Kafka has them all (blocking)."""
    if not app.schedules:
        return
    producer = Producer({**client, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for d in app.schedules.values():
        p, cmd = ensure_command(d, partitions)
        producer.produce(app.inbox_topic, key=d.name.encode(), value=cmd.encode(), partition=p,
                         on_delivery=delivered)
    left = producer.flush(timeout_s)
    if errors:
        err = errors[0]
        if kio.is_refusal(err.code()):
            raise ConfigurationError(kio.not_authorized(err.str(), f"writing to {app.inbox_topic}"))
        raise KafkaException(err)
    if left:
        raise ProcessorError(f"could not send the ensure commands of {left} schedule(s) within {timeout_s:.0f}s")
    log.info("ensured %d schedule(s): %s", len(app.schedules), ", ".join(sorted(app.schedules)))
