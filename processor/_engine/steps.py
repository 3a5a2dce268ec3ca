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

Each record also carries a digest of the state its invocation had read before the step (``reads``):
what a step computes may depend on it, and a new owner may run a key's invocations in another order
(a key fed from two topics, whose fetches race), so its replay may read other values. A replay takes
a salvaged step only if it read the same; otherwise the step runs again (decision 007, rule 7).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from processor._engine.core import Entry
from processor._engine.metrics import SECONDS_BOUNDS
from processor._engine.stats import Buckets

log = logging.getLogger("processor.steps")

# One entry (the invocation id is the record key: restore's re-writes); the entries of one
# partition's steps finished in one loop turn. The first two kinds carry no digest of reads (written
# before there was one): a replay takes them whatever it read.
_MAGIC, _BATCH, _MAGIC_READS, _BATCH_READS = 0x53, 0x54, 0x55, 0x56
_HEAD = struct.Struct(">BI")  # magic, generation
_ITEM = struct.Struct(">HI")  # invocation id length, entry length
_DIGEST = 8
_ITEM_READS = struct.Struct(f">HI{_DIGEST}s")  # ... and the digest of what was read before it
BATCH_BYTES = 256 * 1024  # a batch record holds at most about this much (message.max.bytes: 1 MB)
NO_READS = bytes(_DIGEST)  # the digest of an attempt that read nothing before the step


def fold_read(digest: bytes, seq: int, value: bytes | None) -> bytes:
    """`digest` (of the reads before) extended by the read at journal position `seq` of `value`."""
    h = hashlib.blake2b(digest, digest_size=_DIGEST)
    h.update(seq.to_bytes(4, "big"))
    h.update(b"\x00" if value is None else b"\x01" + value)
    return h.digest()


def encode(gen: int, entry: Entry, reads: bytes) -> bytes:
    return _HEAD.pack(_MAGIC_READS, gen) + reads + entry.encode()


def encode_batch(gen: int, items: list[tuple[str, bytes, bytes]]) -> bytes:
    """One record of (invocation id, digest of reads, encoded entry), all written by generation `gen`."""
    parts = [_HEAD.pack(_BATCH_READS, gen)]
    for inv, reads, entry in items:
        raw = inv.encode()
        parts += (_ITEM_READS.pack(len(raw), len(entry), reads), raw, entry)
    return b"".join(parts)


def decode_any(key: bytes | None, data: bytes) -> tuple[int, list[tuple[str, bytes, Entry]]]:
    """A step record of any kind: its generation and its (invocation id, digest of reads, entry)
    triples in order; the digest is empty in records written before there was one."""
    magic, gen = _HEAD.unpack_from(data)
    at = _HEAD.size
    if magic == _MAGIC:
        return gen, [((key or b"").decode(), b"", Entry.decode(data[at:]))]
    if magic == _MAGIC_READS:
        return gen, [((key or b"").decode(), data[at:at + _DIGEST], Entry.decode(data[at + _DIGEST:]))]
    if magic not in (_BATCH, _BATCH_READS):
        raise ValueError(f"not a step record (first byte {magic:#x})")
    item = _ITEM_READS if magic == _BATCH_READS else _ITEM
    out: list[tuple[str, bytes, Entry]] = []
    while at < len(data):
        n_inv, n_entry, *digest = item.unpack_from(data, at)
        at += item.size
        inv = data[at:at + n_inv].decode()
        at += n_inv
        out.append((inv, digest[0] if digest else b"", Entry.decode(data[at:at + n_entry])))
        at += n_entry
    return gen, out


@dataclass(frozen=True, slots=True)
class Logged:
    """A step record as read back: where it is, who wrote it, what it holds, and the digest of
    what its invocation had read before the step (empty: unknown, taken whatever a replay read)."""

    offset: int
    gen: int
    invocation_id: str
    entry: Entry
    reads: bytes = b""

    def fits(self, reads: bytes) -> bool:
        """Whether a replay that read `reads` before this step may take its result."""
        return not self.reads or self.reads == reads


@dataclass(slots=True)
class Salvage:
    """What a restore adopted from the steps log: records per invocation, in the order written."""

    entries: dict[str, list[Logged]] = field(default_factory=dict)
    end: int = 0  # the log end read to: every record before it was looked at

    def __len__(self) -> int:
        return sum(len(es) for es in self.entries.values())


def adopt(records: list[Logged], committed_gen: int, end: int) -> Salvage:
    """The records a restore keeps: those of the latest committed generation (older ones were
    written by a writer the partition had already moved away from; newer ones by an owner that
    never committed its generation, so no handler saw a step of it). The first record of an
    (invocation, seq, reads) wins: it is what that writer's handler saw after those reads. Records
    of one step with different reads are all kept: the replay's reads choose (``Logged.fits``)."""
    out = Salvage(end=end)
    seen: set[tuple[str, int, bytes]] = set()
    for r in sorted(records, key=lambda r: r.offset):
        if r.gen != committed_gen or (r.invocation_id, r.entry.seq, r.reads) in seen:
            continue
        seen.add((r.invocation_id, r.entry.seq, r.reads))
        out.entries.setdefault(r.invocation_id, []).append(r)
    return out


@dataclass(slots=True, kw_only=True)
class Salvaged:
    """What a restore adopted from the steps log for one partition, handed to its worker."""

    generation: int                      # this owner's: one more than the latest committed
    entries: dict[str, list[Logged]]     # per invocation, re-written under `generation` at `offsets`
    offsets: dict[str, int]              # per invocation, the first offset of its re-written records
    end: int                             # the log end the restore read to


def salvage(committed_gen: int, records: list[Logged], end: int,
            write_now: Callable[[list[Logged]], list[int]]) -> Salvaged:
    """A restore's adoption (decision 007, rules 3 and 4), without I/O: adopt the `records` read up
    to `end` that generation `committed_gen` wrote, re-write them under the next generation with
    `write_now` (which returns once they are acknowledged, with their offsets), and hand over the
    result. The engine passes the Kafka log; the crash-point tests a list."""
    found = adopt(records, committed_gen, end)
    copies = [replace(r, gen=committed_gen + 1, offset=-1) for rs in found.entries.values() for r in rs]
    offsets: dict[str, int] = {}
    for r, offset in zip(copies, write_now(copies), strict=True):
        offsets.setdefault(r.invocation_id, offset)
    return Salvaged(generation=committed_gen + 1, entries=found.entries, offsets=offsets, end=end)


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
                    gen, items = decode_any(m.key(), m.value() or b"")
                except (ValueError, struct.error) as e:
                    log.warning("%s[%d]@%d: %s; skipped", topic, partition, offset, e)
                    continue
                out += (Logged(offset=offset, gen=gen, invocation_id=inv, entry=entry, reads=reads)
                        for inv, reads, entry in items)
            pos = max(pos, c.position([TopicPartition(topic, partition)])[0].offset)
    finally:
        c.close()
    return out


@dataclass(slots=True)
class _Batch:
    items: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (invocation id, reads, entry)
    acked: list[Callable[[int | None], None]] = field(default_factory=list)
    size: int = 0


def _ack_all(callbacks: list[Callable[[int | None], None]], offset: int | None) -> None:
    for cb in callbacks:
        cb(offset)


class StepLog:
    """The idempotent producer of ``<app>.steps`` and the thread serving its acknowledgements.
    ``write`` may be called from the event loop; ``on_acked(offset or None)`` runs on the loop."""

    def __init__(self, config: dict[str, Any], topic: str, loop: asyncio.AbstractEventLoop) -> None:
        self.topic = topic
        self._loop = loop
        self._producer = Producer({**config, "enable.idempotence": True, "acks": "all", "linger.ms": 0,
                                   "message.timeout.ms": 10_000})
        self._batches: dict[tuple[int, int], _Batch] = {}  # (partition, generation) -> this turn's steps
        self.ack_seconds = Buckets(SECONDS_BOUNDS)  # per record (a loop turn's steps of one partition)
        self._flush_scheduled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="steps-acks", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def write(self, partition: int, invocation_id: str, gen: int, entry: Entry, reads: bytes,
              on_acked: Callable[[int | None], None]) -> None:
        """Queue a step record; the steps of one loop turn go out together, one record per
        partition (a produce call costs more than the record: one per step was a fifth of the loop
        under load), right after the turn — no linger."""
        batch = self._batches.get((partition, gen))
        if batch is None:
            batch = self._batches[(partition, gen)] = _Batch()
        data = entry.encode()
        batch.items.append((invocation_id, reads, data))
        batch.acked.append(on_acked)
        batch.size += len(data) + len(invocation_id) + _ITEM_READS.size
        if batch.size >= BATCH_BYTES:
            self._produce(partition, gen, self._batches.pop((partition, gen)))
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batches, self._batches = self._batches, {}
        for (partition, gen), batch in batches.items():
            self._produce(partition, gen, batch)

    def _produce(self, partition: int, gen: int, batch: _Batch) -> None:
        loop = self._loop
        sent = time.perf_counter()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            offset = None if err is not None else msg.offset()
            self.ack_seconds.observe(time.perf_counter() - sent)  # on the serving thread (at worst a lost count)
            if err is not None:
                log.warning("a record of %d step(s) on %s[%d] not acknowledged: %s", len(batch.acked),
                            self.topic, partition, err.str())
            loop.call_soon_threadsafe(_ack_all, batch.acked, offset)
        while True:
            try:
                self._producer.produce(self.topic, value=encode_batch(gen, batch.items), partition=partition,
                                       on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.01)

    def write_now(self, partition: int, records: list[Logged], timeout: float) -> list[int]:
        """Write `records` (their offsets aside) and wait for their acknowledgement
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
        for i, r in enumerate(records):
            self._producer.produce(self.topic, key=r.invocation_id.encode(), value=encode(r.gen, r.entry, r.reads),
                                   partition=partition, on_delivery=delivered_at(i))
        if not done.wait(timeout) or any(o is None for o in offsets):
            raise TimeoutError(f"{sum(o is None for o in offsets)} of {len(records)} step records to "
                               f"{self.topic}[{partition}] not acknowledged in {timeout:.0f}s")
        return [o for o in offsets if o is not None]

    def close(self) -> None:
        """Stop serving acknowledgements; the producer is left to the process's end (never flushed
        here: a broker that is away must not hold up a shutdown)."""
        self._stop.set()
