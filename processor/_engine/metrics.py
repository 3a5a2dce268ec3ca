"""Where commit cycles spend their time: per-phase samples kept in a bounded window."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

PHASES = ("produce", "flush", "send_offsets", "commit", "apply", "cycle")


@dataclass(slots=True)
class CommitTimings:
    """Seconds per phase of recent commit cycles (the last `window` of each)."""

    window: int = 10_000
    samples: dict[str, deque[float]] = field(default_factory=dict)
    records: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))

    def __post_init__(self) -> None:
        self.samples = {p: deque(maxlen=self.window) for p in PHASES}

    def add(self, phase: str, seconds: float) -> None:
        self.samples[phase].append(seconds)

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
