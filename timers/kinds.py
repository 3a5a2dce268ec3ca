"""What a timer is for, and firing it (docs/architecture.md, "Timers").

A timer row's payload is an Avro ``Timer`` record: its :class:`TimerKind`, an ``attempt`` number and
optional ``data``. The partition hands :func:`fire` one action per kind; this module decodes each
due timer and calls its kind's action — the engine never reads a payload itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from processor import schemas
from processor.timers.index import Timer

__all__ = ["Fired", "TimerKind", "decode_timer", "encode_timer", "fire"]


class TimerKind(enum.Enum):
    STEP_RETRY = "step_retry"              # a step's next attempt is due (attempt: that attempt)
    INVOCATION_RETRY = "invocation_retry"  # a backing-off invocation runs again (attempt: its attempt)
    PURGE = "purge"                        # a finished invocation's retention is over
    SLEEP = "sleep"                        # ctx.sleep: the pending journal entry at seq completes
    SEND = "send"                          # a delayed one-way call: data is the inbox command, attempt its partition


def encode_timer(kind: TimerKind, attempt: int = 0, data: bytes | None = None) -> bytes:
    return schemas.encode("Timer", {"kind": kind.value, "attempt": attempt, "data": data})


def decode_timer(data: bytes) -> tuple[TimerKind, int, bytes | None]:
    r = schemas.decode("Timer", data)
    return TimerKind(r["kind"]), r["attempt"], r["data"]


@dataclass(frozen=True, slots=True)
class Fired:
    """A due timer, decoded: what its kind's action gets."""

    timer: Timer
    kind: TimerKind
    attempt: int
    data: bytes | None


def fire(due: Iterable[Timer], actions: Mapping[TimerKind, Callable[[Fired], None]]) -> int:
    """Run the action of each due timer's kind, in due order; returns how many fired. A kind without
    an action is a programming error (every kind a partition schedules, it must handle)."""
    n = 0
    for t in due:
        kind, attempt, data = decode_timer(t.payload)
        actions[kind](Fired(timer=t, kind=kind, attempt=attempt, data=data))
        n += 1
    return n
