"""Plain counters the engine and its partition workers keep for metrics.

Nothing here talks to Prometheus: the hot path bumps ints in dicts (a method call and a dict update
per invocation start or finish, per step outcome, per dead letter), and the admin endpoint's
collector (``processor/_admin/metrics.py``) reads them when it is scraped. One ``PartitionStats`` per
engine, shared by its workers, so counts survive rebalances.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from processor._engine.core import Entry, Failure


@dataclass(slots=True)
class Buckets:
    """A cumulative histogram without a metrics library: counts per upper bound (``+Inf`` last),
    a sum and a count. ``observe`` is a bisect and two additions."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """(upper bound as Prometheus writes it, cumulative count) pairs ending with ``+Inf``, and the sum."""
        out, running = [], 0
        for bound, count in zip([*map(_le, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out, self.total


def _le(bound: float) -> str:
    return repr(float(bound))


# Why an invocation was paused or dead-lettered (the ``reason`` label of its metrics).
DIVERGED = "nondeterminism"       # its replay diverged from its journal
EXHAUSTED = "retries_exhausted"   # its handler kept raising until its retry policy gave up

ATTEMPT_BOUNDS = (1, 2, 3, 5, 10, 20, 50, 100)
STEP_SECONDS_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class PartitionStats:
    """Per-engine counters the partition workers bump: invocations by handler (created, completed,
    failed, paused, backing off), step outcomes, attempts and body durations, and dead letters by
    reason."""

    created_by: dict[str, int] = field(default_factory=dict)
    completed_by: dict[str, int] = field(default_factory=dict)
    failed_by: dict[str, int] = field(default_factory=dict)
    paused_by: dict[tuple[str, str], int] = field(default_factory=dict)  # (handler, reason)
    dead_lettered_by: dict[tuple[str, str], int] = field(default_factory=dict)  # invocations', (handler, reason)
    backing_off_by: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    steps_failed: int = 0
    step_attempts: Buckets = field(default_factory=lambda: Buckets(ATTEMPT_BOUNDS))
    # Per (handler, step name): names come from the code, so the label set is bounded.
    step_seconds: dict[tuple[str, str], Buckets] = field(default_factory=dict)

    def created(self, target: str) -> None:
        d = self.created_by
        d[target] = d.get(target, 0) + 1

    def finished(self, target: str, failure: Failure | None) -> None:
        d = self.completed_by if failure is None else self.failed_by
        d[target] = d.get(target, 0) + 1

    def paused(self, target: str, reason: str) -> None:
        d = self.paused_by
        d[(target, reason)] = d.get((target, reason), 0) + 1

    def invocation_dead_lettered(self, target: str, reason: str) -> None:
        d = self.dead_lettered_by
        d[(target, reason)] = d.get((target, reason), 0) + 1

    def backing_off(self, target: str) -> None:
        d = self.backing_off_by
        d[target] = d.get(target, 0) + 1

    def step(self, entry: Entry) -> None:
        """A step's final outcome (succeeded or failed for good), with the attempts it took."""
        self.step_attempts.observe(entry.attempts)
        if entry.failure is not None:
            self.steps_failed += 1

    def step_ran(self, target: str, name: str, seconds: float) -> None:
        """One attempt of a step body ended (returned or raised) after `seconds`."""
        b = self.step_seconds.get((target, name))
        if b is None:
            b = self.step_seconds[(target, name)] = Buckets(STEP_SECONDS_BOUNDS)
        b.observe(seconds)

    def dead_lettered(self, error_class: str) -> None:
        d = self.dead_letters
        d[error_class] = d.get(error_class, 0) + 1


UNCOUNTED = PartitionStats()
"""What a worker counts into until its engine hands it the engine's (workers built by tests)."""
