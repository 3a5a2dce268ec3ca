"""Per-handler limits on one partition (docs/decisions/014-limits.md).

An invocation of a handler with a limit joins its handler's queue on this partition — one per
partition, or one per key for ``concurrency_per_key`` — in arrival order. The queue's first
``started`` invocations have started and not finished (running, suspended, backing off or paused: a
started invocation holds its slot until it finishes); the rest wait, ``queued``, and the first of them
starts when the limits allow: fewer than ``concurrency`` started, and a token of the rate's bucket.

What decides is committed state, so a takeover decides alike: a queue is saved as slot rows in the
``Q`` namespace under (handler target, key or ""), numbered in arrival order like an exclusive
key's inbox (a target has a "/", which no object name has); which invocations started is their
rows' status; the rate's bucket is one ``M`` counter per handler, the theoretical arrival time of
the generic cell rate algorithm, written in the cycle of each start it allowed.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from processor._app import App, HandlerDef
from processor._engine.records import InvocationRow, Status
from processor._limits import Limit, Rate
from processor.state import keys
from processor.state.overlay import PartitionState

log = logging.getLogger("processor.partition")

_U64 = struct.Struct(">Q")


@dataclass(slots=True)
class LimitQueue:
    """The invocations of one handler (on one key, or this partition) that started and did not finish
    — ``ids[:started]`` — followed by those waiting, in arrival order."""

    limit: Limit | None  # None: the handler lost its limit (or is gone) in this deploy: nothing waits
    target: str
    ids: deque[str]
    started: int = 0


def limit_slot(h: HandlerDef, key: str | None) -> tuple[str, str]:
    """The queue (and slot rows' prefix) of an invocation of limited handler `h` with `key`."""
    assert h.limit is not None
    return h.target, (key or "") if h.limit.per_key else ""


def rate_key(target: str) -> bytes:
    """The ``M`` counter holding the theoretical arrival time (µs) of `target`'s rate on a partition."""
    return keys.meta_key(f"rate:{target}")


def take_token(tat_us: int, now_us: int, interval_us: int, burst: int) -> tuple[bool, int]:
    """The generic cell rate algorithm: whether a start at `now_us` conforms to a rate of one per
    `interval_us` with `burst` at once, and then the new theoretical arrival time, else the time the
    next start may go."""
    earliest = tat_us - (burst - 1) * interval_us
    if now_us < earliest:
        return False, earliest
    return True, max(tat_us, now_us) + interval_us


class Limiter:
    """The part of ``PartitionWorker`` that keeps its limited handlers' queues."""

    app: App
    partition: int
    partitions_total: int
    state: PartitionState
    queued: int
    _queued_rows: dict[str, InvocationRow]
    _limited: dict[tuple[str, str], LimitQueue]
    _limit_of: dict[str, tuple[str, str]]
    _limit_wake: dict[tuple[str, str], int]
    _on_work: Callable[[], None]

    if TYPE_CHECKING:
        def now_ms(self) -> int: ...
        def write(self, key: bytes, value: bytes | None) -> None: ...
        def _row(self, invocation_id: str) -> InvocationRow | None: ...
        def _resume(self, invocation_id: str) -> int: ...
        def start(self, row: InvocationRow, *, fresh: bool | None = None, eager: bool = False,
                  h: HandlerDef | None = None, decoded: tuple[Any] | None = None) -> None: ...

    def limited_create(self, row: InvocationRow, h: HandlerDef, *, fresh: bool, eager: bool,
                       decoded: tuple[Any] | None) -> None:
        """A new invocation of a limited handler: start it if it is first in line and the limits
        allow, else queue it (``queued`` with why, saved by the next seal)."""
        slot = limit_slot(h, row.key)
        lq = self._limited.get(slot)
        if lq is None:
            lq = self._limited[slot] = LimitQueue(limit=h.limit, target=h.target, ids=deque())
        lq.ids.append(row.id)
        self._limit_of[row.id] = slot
        ahead = len(lq.ids) - 1 - lq.started
        why = self._take_slot(slot, lq) if not ahead else f"{self._why(lq)} ({ahead} queued ahead)"
        if why is None:
            lq.started += 1
            self.start(row, fresh=fresh, eager=eager, h=h, decoded=decoded)
            return
        self.queued += 1
        self._queued_rows[row.id] = replace(row, status=Status.QUEUED, paused_reason=why)
        self._on_work()

    def limited_release(self, row: InvocationRow, durable: bool) -> None:
        """`row` finished (or was killed or cancelled while queued): free its slot, start who may."""
        slot = self._limit_of.pop(row.id)
        if durable and row.inbox_seq is not None:
            self.write(keys.inbox_key(slot[0], slot[1], row.inbox_seq), None)
        lq = self._limited.get(slot)
        if lq is None:
            return
        try:
            at = lq.ids.index(row.id)
        except ValueError:
            return
        del lq.ids[at]
        if at < lq.started:
            lq.started -= 1
        else:
            self.queued -= 1
        self.limited_admit(slot)

    def limited_admit(self, slot: tuple[str, str]) -> None:
        """Start the waiting invocations of queue `slot`, in order, while the limits allow."""
        lq = self._limited.get(slot)
        if lq is None:
            return
        while lq.started < len(lq.ids):
            inv = lq.ids[lq.started]
            why = self._take_slot(slot, lq)
            if why is not None:
                self._set_why(inv, why)
                return
            lq.started += 1
            self.queued -= 1
            row = self._row(inv)
            if row is None or row.status is not Status.QUEUED:  # cannot happen: a queued row is kept
                log.error("partition %d: queued invocation %s of %s has no queued row", self.partition, inv,
                          lq.target)
                lq.started -= 1
                del lq.ids[lq.started]
                self._limit_of.pop(inv, None)
                continue
            self.start(row)
        if not lq.ids and self._limited.get(slot) is lq:
            del self._limited[slot]
            self._limit_wake.pop(slot, None)

    def limits_due(self) -> None:
        """Start what waited for its rate and may go now (called with the timers)."""
        if not self._limit_wake:
            return
        now = self.now_ms()
        for slot, due in list(self._limit_wake.items()):
            if due <= now and self._limit_wake.get(slot) == due:
                del self._limit_wake[slot]
                self.limited_admit(slot)

    def next_limit_wake_ms(self) -> int | None:
        """When the first queue waiting for its rate may start its next (None: none waits for one)."""
        return min(self._limit_wake.values(), default=None)

    def load_limited(self, slots: list[tuple[str, str, str]]) -> int:
        """Rebuild the queues from their stored slot rows (`slots`: (target, key, invocation id) in
        arrival order), resume the started invocations and start who may. Returns how many it resumed."""
        waiting: dict[tuple[str, str], list[str]] = {}
        started: list[str] = []
        for target, key, inv in slots:
            slot = (target, key)
            row = self._row(inv)
            if row is None:  # cannot happen: a slot row is deleted with (or before) its invocation's row
                log.error("partition %d: queued invocation %s of %s has no row", self.partition, inv, target)
                continue
            lq = self._limited.get(slot)
            if lq is None:
                h = self.app.handler(target)
                lq = self._limited[slot] = LimitQueue(limit=None if h is None else h.limit, target=target,
                                                      ids=deque())
            self._limit_of[inv] = slot
            if row.status is Status.QUEUED:
                waiting.setdefault(slot, []).append(inv)
            else:  # started: a prefix of its queue in every committed history
                lq.ids.append(inv)
                lq.started += 1
                started.append(inv)
        for slot, invs in waiting.items():
            self._limited[slot].ids.extend(invs)
            self.queued += len(invs)
        resumed = sum(self._resume(inv) for inv in started)
        for slot in list(self._limited):
            self.limited_admit(slot)
        return resumed

    def _take_slot(self, slot: tuple[str, str], lq: LimitQueue) -> str | None:
        """Claim a place for the first waiting invocation of `lq`: None if it may start (a rate token
        is taken), else why it waits (and a wake-up is set when it waits for the rate)."""
        lim = lq.limit
        if lim is None:
            return None
        if lim.concurrency is not None and lq.started >= lim.concurrency:
            return self._why(lq)
        if lim.rate is not None:
            due_ms = self._take_token(lq.target, lim.rate)
            if due_ms is not None:
                self._limit_wake[slot] = due_ms
                return self._why(lq)
        return None

    def _why(self, lq: LimitQueue) -> str:
        """What queue `lq` waits for: a concurrency slot if every one is taken, else its rate."""
        lim = lq.limit
        if lim is not None and lim.concurrency is not None and lq.started >= lim.concurrency:
            return (f"waiting for a concurrency slot of {lq.target}: {lim.concurrency} running per "
                    f"{'key' if lim.per_key else 'partition'}")
        if lim is not None and lim.rate is not None:
            return (f"waiting for the rate of {lq.target}: {lim.rate.per_second:g}/s over the app, "
                    f"{lim.rate.per_second / self.partitions_total:g}/s on each of {self.partitions_total} "
                    "partitions")
        return f"waiting for its turn in the queue of {lq.target}"

    def _take_token(self, target: str, rate: Rate) -> int | None:
        """Take a token of `target`'s rate on this partition (None), or say when one is due (ms)."""
        interval_us, burst = rate.per_partition(self.partitions_total)
        raw = self.state.get(rate_key(target))
        tat = _U64.unpack(raw)[0] if raw else 0
        ok, at = take_token(tat, self.now_ms() * 1000, interval_us, burst)
        if not ok:
            return -(-at // 1000)
        self.write(rate_key(target), _U64.pack(at))
        return None

    def _set_why(self, invocation_id: str, why: str) -> None:
        """Say why queued `invocation_id` waits, on its row (``processor invocations`` shows it)."""
        row = self._queued_rows.get(invocation_id)
        if row is not None:
            if row.paused_reason != why:
                self._queued_rows[invocation_id] = replace(row, paused_reason=why)
            return
        stored = self._row(invocation_id)
        if stored is not None and stored.status is Status.QUEUED and stored.paused_reason != why:
            self.write(keys.invocation_key(invocation_id), replace(stored, paused_reason=why).encode())
