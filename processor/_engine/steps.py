"""Step results made durable by a Kafka acknowledgement (docs/decisions/007-durability-on-ack.md).

A completed step is the one thing a replay cannot produce again, so the handler may see it only
once it is durable. Instead of waiting for the cycle's transaction to commit, the result is written
to ``<app>.steps`` (partition = the invocation's) with ``acks=all`` by an idempotent producer, and
released when the broker acknowledges it. Records there outlive an aborted cycle; the next owner of
the partition reads the ones no committed cycle absorbed yet and hands them to the invocations they
belong to when those run again.

Each record carries the *generation* of its writer: a per-partition counter each owner bumps in its
first transaction and releases no step before that commits. A restore adopts only records of the
latest committed generation: an older writer that still writes (a zombie whose partitions moved)
writes an older generation, and its records are dropped. The new owner re-writes the records it
adopted under its own generation before its first commit, so the rule holds for the next owner too.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from processor._engine.core import Entry

log = logging.getLogger("processor.steps")

_MAGIC = 0x53
_HEAD = struct.Struct(">BI")  # magic, generation


def encode(gen: int, entry: Entry) -> bytes:
    return _HEAD.pack(_MAGIC, gen) + entry.encode()


def decode(data: bytes) -> tuple[int, Entry]:
    magic, gen = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"not a step record (first byte {magic:#x})")
    return gen, Entry.decode(data[_HEAD.size:])


@dataclass(frozen=True, slots=True)
class Logged:
    """A step record as read back: where it is, who wrote it, what it holds."""

    offset: int
    gen: int
    invocation_id: str
    entry: Entry


@dataclass(slots=True)
class Salvage:
    """What a restore adopted from the steps log: entries per invocation, in the order written."""

    entries: dict[str, list[Entry]] = field(default_factory=dict)
    end: int = 0  # the log end read to: every record before it was looked at

    def __len__(self) -> int:
        return sum(len(es) for es in self.entries.values())


def adopt(records: list[Logged], committed_gen: int, end: int) -> Salvage:
    """The records a restore keeps: those of the latest committed generation (older ones were
    written by a writer the partition had already moved away from; newer ones by an owner that
    never committed its generation, so no handler saw a step of it). The first record of an
    (invocation, seq) wins: it is what that writer's handler saw."""
    out = Salvage(end=end)
    seen: set[tuple[str, int]] = set()
    for r in sorted(records, key=lambda r: r.offset):
        if r.gen != committed_gen or (r.invocation_id, r.entry.seq) in seen:
            continue
        seen.add((r.invocation_id, r.entry.seq))
        out.entries.setdefault(r.invocation_id, []).append(r.entry)
    return out


def read(consumer_config: Mapping[str, object], topic: str, partition: int, start: int, end: int,
         *, timeout: float) -> list[Logged]:
    """Every record of `topic`[`partition`] in [start, end): a plain consumer, no group."""
    if end <= start:
        return []
    c = Consumer({**consumer_config, "group.id": f"steps-{uuid.uuid4().hex}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    out: list[Logged] = []
    try:
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        pos = start
        while pos < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] {start}..{end}: stuck at {pos}")
            for m in c.consume(1000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s[%d]: %s", topic, partition, err.str())
                    continue
                offset = m.offset() or 0
                pos = max(pos, offset + 1)
                if offset >= end:
                    continue
                try:
                    gen, entry = decode(m.value() or b"")
                except ValueError as e:
                    log.warning("%s[%d]@%d: %s; skipped", topic, partition, offset, e)
                    continue
                out.append(Logged(offset=offset, gen=gen, invocation_id=(m.key() or b"").decode(), entry=entry))
            pos = max(pos, c.position([TopicPartition(topic, partition)])[0].offset)
    finally:
        c.close()
    return out


class StepLog:
    """The idempotent producer of ``<app>.steps`` and the thread serving its acknowledgements.
    ``write`` may be called from the event loop; ``on_acked(offset or None)`` runs on the loop."""

    def __init__(self, config: dict[str, Any], topic: str, loop: asyncio.AbstractEventLoop) -> None:
        self.topic = topic
        self._loop = loop
        self._producer = Producer({**config, "enable.idempotence": True, "acks": "all", "linger.ms": 0,
                                   "message.timeout.ms": 10_000})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="steps-acks", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def write(self, partition: int, invocation_id: str, gen: int, entry: Entry,
              on_acked: Callable[[int | None], None]) -> None:
        loop = self._loop

        def delivered(err: KafkaError | None, msg: Message) -> None:
            offset = None if err is not None else msg.offset()
            if err is not None:
                log.warning("step record of %s #%d not acknowledged: %s", invocation_id, entry.seq, err.str())
            loop.call_soon_threadsafe(on_acked, offset)
        while True:
            try:
                self._producer.produce(self.topic, key=invocation_id.encode(), value=encode(gen, entry),
                                       partition=partition, on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.01)

    def write_now(self, partition: int, records: list[tuple[str, int, Entry]], timeout: float) -> list[int]:
        """Write `records` (invocation id, generation, entry) and wait for their acknowledgement
        (off the event loop); returns their offsets. Raises TimeoutError if not all were acknowledged."""
        offsets: list[int | None] = [None] * len(records)
        done = threading.Event()
        left = [len(records)]
        lock = threading.Lock()
        if not records:
            return []

        def delivered_at(i: int) -> Callable[[KafkaError | None, Message], None]:
            def cb(err: KafkaError | None, msg: Message) -> None:
                if err is None:
                    offsets[i] = msg.offset()
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()
            return cb
        for i, (inv, gen, entry) in enumerate(records):
            self._producer.produce(self.topic, key=inv.encode(), value=encode(gen, entry), partition=partition,
                                   on_delivery=delivered_at(i))
        if not done.wait(timeout) or any(o is None for o in offsets):
            raise TimeoutError(f"{sum(o is None for o in offsets)} of {len(records)} step records to "
                               f"{self.topic}[{partition}] not acknowledged in {timeout:.0f}s")
        return [o for o in offsets if o is not None]

    def close(self) -> None:
        """Stop serving acknowledgements; the producer is left to the process's end (never flushed
        here: a broker that is away must not hold up a shutdown)."""
        self._stop.set()
