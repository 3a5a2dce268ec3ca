"""Durable timers with only a near window in memory (docs/architecture.md, "Timers").

Every timer is a row in the partition's state under ``timer_key(due_ms, invocation_id, seq)``, so a
scan of the ``TIMER`` namespace is a scan in due order. The index keeps a heap of the timers due
before ``window_end``; everything later stays on disk until time approaches it.

Invariant: every timer row due before ``window_end`` is in the heap, or has been popped or
cancelled. Heap entries are only hints: a timer fires only if its row still exists, so a cancelled,
already fired or discarded (rolled back) timer never fires from a stale heap entry.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from processor.state.keys import TIMER, parse_timer_key, timer_key
from processor.state.overlay import PartitionState

__all__ = ["Timer", "TimerIndex"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Timer:
    """A durable timer: fires for `invocation_id` at `due_ms`; (due_ms, invocation_id, seq) is its
    identity, `payload` what the engine stored with it."""

    due_ms: int
    invocation_id: str
    seq: int
    payload: bytes


_Entry = tuple[int, str, int]  # (due_ms, invocation_id, seq): heap order is due order


class TimerIndex:
    """The due-time index of one partition over its :class:`state.overlay.PartitionState`.

    Call :meth:`load` after restore and again after ``state.discard()``: a discard can bring back
    rows that this index already popped.
    """

    def __init__(self, state: PartitionState, *, window_ms: int = 60_000,
                 max_load: int = 100_000) -> None:
        """An empty index; nothing is read until :meth:`load` or the first :meth:`pop_due`.
        `max_load` bounds how many rows one window slide reads, so a backlog of overdue timers
        (after downtime) is worked through in slices instead of loaded at once."""
        if window_ms < 1 or max_load < 1:
            raise ValueError(f"window_ms and max_load must be >= 1, got {window_ms}, {max_load}")
        self._state = state
        self._window_ms = window_ms
        self._max_load = max_load
        self._heap: list[_Entry] = []
        self._queued: set[_Entry] = set()  # what the heap holds, so no timer is queued twice
        self._window_end = 0  # exclusive; all rows due before it are queued (see the invariant)

    @property
    def window_end_ms(self) -> int:
        """Timers due before this are held in memory; later ones only in state."""
        return self._window_end

    def load(self, now_ms: int) -> None:
        """Forget the heap and queue every timer row due before ``now_ms + window``."""
        self._heap.clear()
        self._queued.clear()
        self._window_end = 0
        self._extend(now_ms + self._window_ms)

    def schedule(self, timer: Timer) -> None:
        """Write the timer's row (replacing one with the same identity) and queue it if it falls
        inside the window. A timer already due fires on the next :meth:`pop_due`."""
        self._state.put(timer_key(timer.due_ms, timer.invocation_id, timer.seq), timer.payload)
        if timer.due_ms < self._window_end:
            self._push((timer.due_ms, timer.invocation_id, timer.seq))

    def cancel(self, due_ms: int, invocation_id: str, seq: int) -> None:
        """Delete the timer's row; a heap entry left behind is skipped when it comes up."""
        self._state.delete(timer_key(due_ms, invocation_id, seq))

    def next_due_ms(self) -> int | None:
        """The earliest due time among live timers, or None if there are none. Slides the window
        forward to the next timer on disk when the in-memory window has run dry."""
        while True:
            while self._heap:
                due, inv, seq = self._heap[0]
                if self._state.get(timer_key(due, inv, seq)) is not None:
                    return due
                self._drop_head()  # cancelled, fired or rolled back
            first = self._first_row_from(self._window_end)
            if first is None:
                return None
            self._extend(first + self._window_ms)

    def pop_due(self, now_ms: int, limit: int = 1000) -> list[Timer]:
        """Up to `limit` timers due at or before `now_ms`, in due order; their rows are deleted, so
        each fires once (within the commit cycle that deletes it)."""
        fired: list[Timer] = []
        while len(fired) < limit:
            if not self._heap or self._heap[0][0] > now_ms:
                if now_ms < self._window_end or not self._extend(now_ms + self._window_ms):
                    break
                continue
            due, inv, seq = self._drop_head()
            key = timer_key(due, inv, seq)
            payload = self._state.get(key)
            if payload is None:
                continue
            self._state.delete(key)
            fired.append(Timer(due_ms=due, invocation_id=inv, seq=seq, payload=payload))
        return fired

    def in_memory(self) -> int:
        """How many entries the heap holds (live or stale)."""
        return len(self._heap)

    def _push(self, entry: _Entry) -> None:
        if entry not in self._queued:
            self._queued.add(entry)
            heapq.heappush(self._heap, entry)

    def _drop_head(self) -> _Entry:
        entry = heapq.heappop(self._heap)
        self._queued.discard(entry)
        return entry

    def _extend(self, until_ms: int) -> bool:
        """Queue rows due in [window_end, until_ms) and move window_end up to until_ms, or only up
        to the first row left unread when `max_load` rows were queued. False if it did not move."""
        if until_ms <= self._window_end:
            return False
        end = until_ms
        rows = self._state.scan(TIMER, start=timer_key(self._window_end, "", 0))
        for loaded, (key, _) in enumerate(rows):
            due, inv, seq = parse_timer_key(key)
            if due >= until_ms:
                break
            if loaded >= self._max_load and due > self._window_end:
                end = due  # rows due at `end` are read again next time; _queued dedupes them
                break
            self._push((due, inv, seq))
        self._window_end = end
        return True

    def _first_row_from(self, from_ms: int) -> int | None:
        for key, _ in self._state.scan(TIMER, start=timer_key(from_ms, "", 0)):
            return parse_timer_key(key)[0]
        return None
