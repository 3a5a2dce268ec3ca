"""Where commit cycles spend their time: per-phase samples kept in a bounded window (for the summary
logged at shutdown) and cumulative buckets (for the admin endpoint's histograms)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from processor._engine.stats import Buckets

PHASES = ("produce", "flush", "send_offsets", "commit", "apply", "cycle")
SECONDS_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECORDS_BOUNDS = (1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 25_000)


@dataclass(slots=True)
class CommitTimings:
    """Seconds per phase of recent commit cycles (the last `window` of each)."""

    window: int = 10_000
    samples: dict[str, deque[float]] = field(default_factory=dict)
    records: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    buckets: dict[str, Buckets] = field(default_factory=dict)
    record_buckets: Buckets = field(default_factory=lambda: Buckets(RECORDS_BOUNDS))

    def __post_init__(self) -> None:
        self.samples = {p: deque(maxlen=self.window) for p in PHASES}
        self.buckets = {p: Buckets(SECONDS_BOUNDS) for p in PHASES}

    def add(self, phase: str, seconds: float) -> None:
        self.samples[phase].append(seconds)
        self.buckets[phase].observe(seconds)

    def add_records(self, n: int) -> None:
        """Records (changelog writes and outputs) one cycle's transaction produced."""
        self.records.append(n)
        self.record_buckets.observe(n)

    def last(self) -> dict[str, float]:
        """Seconds of each phase of the latest cycle that reached it."""
        return {p: xs[-1] for p, xs in self.samples.items() if xs}

    def summary(self) -> str:
        parts = []
        for phase, xs in self.samples.items():
            if xs:
                s = sorted(xs)
                parts.append(f"{phase} p50 {s[len(s) // 2] * 1000:.1f} / p99 {s[int(len(s) * 0.99)] * 1000:.1f} ms")
        n = len(self.records)
        per = sum(self.records) / n if n else 0.0
        return f"{n} cycles, {per:.0f} records each; " + ", ".join(parts)


class Stopwatch:
    """Laps of one cycle: ``lap(phase)`` records the time since the previous lap."""

    __slots__ = ("_last", "_t")

    def __init__(self, timings: CommitTimings) -> None:
        self._t = timings
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._t.add(phase, now - self._last)
        self._last = now
