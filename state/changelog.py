"""Restore a partition's store from its compacted changelog (docs/architecture.md, "Restore and rebalance").

The changelog holds one record per store write (key = store key, value = bytes or None for a
delete), produced by the engine inside Kafka transactions. Restore reads partition `p` with a
``read_committed`` consumer from the store's changelog offset until the consumer's position reaches
the log end, applying records in batches together with the offset they bring the store to, so an
interrupted restore resumes where it stopped.

The target is the log end as seen with *read-uncommitted* isolation (``list_offsets``): the last
stable offset that ``get_watermark_offsets`` reports on a ``read_committed`` consumer would stop
short of a transaction that commits later. The position passes commit/abort markers and aborted
records; it cannot pass a transaction that is still open, which is what the deadline is for.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # OffsetSpec: re-exported, untyped
    AdminClient,
    OffsetSpec,
)

from processor.state.keys import LOCAL
from processor.state.store import Store, StoreError

__all__ = ["RestoreCancelled", "RestoreError", "RestoreStats", "log_end", "restore"]

log = logging.getLogger("state.restore")

_REPORT_EVERY_S = 1.0
_POLL_S = 0.5


class RestoreError(StoreError):
    """A restore did not reach the changelog's end in time, or met a record it cannot apply."""


class RestoreCancelled(RestoreError):
    """A restore was told to stop (its partition was revoked) before it reached the end."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreStats:
    """What one :func:`restore` did."""

    records: int
    """Changelog records applied (puts and tombstones)."""
    start_offset: int
    """The changelog offset restore started from (0 after a clear)."""
    end_offset: int
    """The store's changelog offset when restore returned."""
    seconds: float


def restore(store: Store, *, consumer_config: Mapping[str, object], topic: str, partition: int,
            batch_size: int = 10_000, deadline_s: float = 600.0,
            progress: Callable[[int, int, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> RestoreStats:
    """Bring `store` up to the end of changelog `topic` partition `partition`.

    `consumer_config` needs ``bootstrap.servers`` (and security settings); group, commit and
    isolation settings are set here. `progress(records_done, records_left_estimate, rate_per_s)` is
    called about once a second and at the end. A store ahead of the log end (the changelog was
    recreated) is cleared and restored from 0. Raises :class:`RestoreError` if the end is not
    reached within `deadline_s` seconds; the batches applied so far stay applied. Retriable errors
    (no leader yet, coordinator moving, broker away) are retried with backoff until the deadline.
    `should_stop()` is checked between fetches: when it says so, restore stops early (raising
    :class:`RestoreCancelled`), keeping what it applied.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    where = f"{topic}[{partition}]"
    target = log_end(consumer_config, topic, partition, deadline=deadline, should_stop=should_stop)
    start = store.changelog_offset()
    if start > target:
        log.warning("store is at changelog offset %d but %s ends at %d (changelog recreated?): "
                    "clearing the store and restoring from 0", start, where, target)
        store.clear()
        start = 0
    if target <= start:
        log.info("restore %s: store already at offset %d, nothing to read", where, start)
        if progress is not None:
            progress(0, 0, 0.0)
        return RestoreStats(records=0, start_offset=start, end_offset=start,
                            seconds=time.monotonic() - t0)

    log.info("restore %s: reading offsets %d..%d", where, start, target)
    run = _Run(store=store, where=where, target=target, start=start, t0=t0, progress=progress)
    consumer = Consumer(_consumer_config(consumer_config))
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        run.loop(consumer, TopicPartition(topic, partition), batch_size=batch_size, deadline=deadline,
                 should_stop=should_stop)
    finally:
        consumer.close()
    return RestoreStats(records=run.records, start_offset=start, end_offset=run.applied,
                        seconds=time.monotonic() - t0)


class _Run:
    """The mutable bookkeeping of one restore."""

    def __init__(self, *, store: Store, where: str, target: int, start: int, t0: float,
                 progress: Callable[[int, int, float], None] | None) -> None:
        self.store = store
        self.where = where
        self.target = target
        self.t0 = t0
        self.progress = progress
        self.records = 0
        self.applied = start  # the store's changelog offset
        self.position = start  # the next offset the consumer will hand us
        self.batch: list[tuple[bytes, bytes | None]] = []
        self.last_report = t0

    def loop(self, consumer: Consumer, tp: TopicPartition, *, batch_size: int, deadline: float,
             should_stop: Callable[[], bool] | None) -> None:
        while self.position < self.target:
            if should_stop is not None and should_stop():
                self.flush()
                raise RestoreCancelled(f"restore of {self.where} stopped at position {self.position}")
            now = time.monotonic()
            if now >= deadline:
                self.flush()
                raise RestoreError(
                    f"restore of {self.where} did not finish in time: position {self.position}, "
                    f"target {self.target} ({self.target - self.position} offsets short; an open "
                    "transaction holds the read_committed position back until it ends)")
            msgs = consumer.consume(num_messages=max(1, batch_size - len(self.batch)),
                                    timeout=min(_POLL_S, deadline - now))
            self._take(msgs)
            pos = consumer.position([tp])[0].offset
            if pos > self.position:
                self.position = pos  # past markers and aborted records
            if len(self.batch) >= batch_size or not msgs or self.position >= self.target:
                self.flush()
            if time.monotonic() - self.last_report >= _REPORT_EVERY_S:
                self.report()
        self.flush()
        self.report(final=True)

    def _take(self, msgs: list[Message]) -> None:
        append = self.batch.append  # the per-record hot loop of restore
        taken = 0
        last: Message | None = None
        for m in msgs:
            if m.error() is not None:
                self._error(m)
                continue
            key = m.key()
            if not key or key[:1] == LOCAL:
                raise RestoreError(f"restore of {self.where}: record at offset {m.offset()} has key "
                                   f"{key!r}, which is not a changelogged store key")
            append((key, m.value()))
            taken += 1
            last = m
        self.records += taken
        offset = None if last is None else last.offset()
        if offset is not None and offset + 1 > self.position:
            self.position = offset + 1

    def _error(self, m: Message) -> None:
        err = m.error()
        if err is None or err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise RestoreError(f"restore of {self.where}: fatal consumer error {err}")
        log.warning("restore %s: consumer error %s (retrying)", self.where, err)

    def flush(self) -> None:
        """Apply the pending batch with the offset it brings the store to."""
        if self.batch or self.position > self.applied:
            self.store.apply(self.batch, self.position)
            self.applied = self.position
            self.batch = []

    def report(self, *, final: bool = False) -> None:
        now = time.monotonic()
        self.last_report = now
        elapsed = max(now - self.t0, 1e-9)
        rate = self.records / elapsed
        left = max(0, self.target - self.position)
        if final:
            log.info("restore %s: done, %d records in %.1fs (%.0f records/s), store at offset %d",
                     self.where, self.records, elapsed, rate, self.applied)
        else:  # the caller's `progress` reports to the operator, at an interval of its own
            log.debug("restore %s: %d records applied, ~%d left, %.0f records/s",
                      self.where, self.records, left, rate)
        if self.progress is not None:
            self.progress(self.records, left, rate)


def _consumer_config(base: Mapping[str, object]) -> dict[str, Any]:
    return {
        # Big fetches: restore reads one partition flat out (the defaults fetch 1 MB at a time).
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.max.bytes": 64 * 1024 * 1024,
        **base,
        # A throwaway group: restore never subscribes or commits, the group id is only required.
        "group.id": f"restore-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }


def log_end(config: Mapping[str, object], topic: str, partition: int, *, deadline: float,
             should_stop: Callable[[], bool] | None = None) -> int:
    """The partition's log end offset, uncommitted transactions included. Retriable errors (a
    just-created topic without a leader yet, a broker restarting) are retried with backoff until
    `deadline` (monotonic)."""
    admin = AdminClient({k: v for k, v in config.items() if k not in _CONSUMER_ONLY})  # type: ignore[misc]
    tp = TopicPartition(topic, partition)
    backoff = 0.1
    while True:
        left = deadline - time.monotonic()
        try:
            spec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            timeout = max(1.0, min(10.0, left))
            futures = admin.list_offsets({tp: spec}, isolation_level=IsolationLevel.READ_UNCOMMITTED,
                                         request_timeout=timeout)
            info = next(iter(futures.values())).result(timeout=timeout + 5)
            return int(info.offset)
        except (KafkaException, TimeoutError) as e:
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            retriable = err is None or err.retriable() or not err.fatal()
            if not retriable or left <= backoff:
                raise RestoreError(f"cannot read the log end of changelog {topic}[{partition}]: {e}") from e
            if should_stop is not None and should_stop():
                raise RestoreCancelled(f"restore of {topic}[{partition}] stopped before it began") from e
            log.info("restore %s[%d]: log end not available yet (%s); retrying in %.1fs",
                     topic, partition, err.str() if err else e, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


_CONSUMER_ONLY = frozenset({
    "group.id", "group.instance.id", "isolation.level", "enable.auto.commit", "auto.offset.reset",
    "enable.partition.eof", "enable.auto.offset.store", "auto.commit.interval.ms", "session.timeout.ms",
    "max.poll.interval.ms", "fetch.min.bytes", "fetch.max.bytes", "fetch.wait.max.ms",
    "max.partition.fetch.bytes", "queued.max.messages.kbytes", "queued.min.messages",
    "partition.assignment.strategy", "group.protocol",
})
