"""Liveness as the admin endpoint's ``/healthz`` judges it, from marks the engine leaves.

The judgement must not need the event loop (a stuck loop is one of the things it reports), so the
engine writes plain floats the HTTP thread reads: a heartbeat the loop leaves every ``BEAT_S``, and
when the commit loop woke up with work and when it last finished a cycle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

BEAT_S = 0.5


@dataclass(slots=True)
class Health:
    """Marks (``time.monotonic()``) the engine leaves; read from any thread."""

    beat: float = field(default_factory=time.monotonic)   # the event loop ran (``Engine._heartbeat``)
    busy_since: float | None = None  # the commit loop woke up with work and has not finished that cycle
    cycle_ended: float | None = None  # the commit loop's last cycle ended (committed or not)
    running: bool = False  # between ``Engine.run`` starting its loops and its shutdown

    def woke(self) -> None:
        self.busy_since = time.monotonic()

    def cycle_done(self) -> None:
        self.cycle_ended = time.monotonic()
        self.busy_since = None

    def verdict(self, bound_s: float, now: float | None = None) -> tuple[bool, str]:
        """(healthy, why): unhealthy when the event loop has not run for `bound_s`, or the commit
        loop has had work for `bound_s` without finishing a cycle. An idle engine is healthy; so is
        one rebuilding after a broker outage (its commit loop finishes cycles that commit nothing)."""
        now = time.monotonic() if now is None else now
        if not self.running:
            return True, "starting or stopping"
        silent = now - self.beat
        if silent > bound_s:
            return False, f"the event loop has not run for {silent:.1f}s (bound {bound_s:g}s)"
        busy = self.busy_since
        if busy is not None and now - busy > bound_s:
            return False, f"the commit loop has had work for {now - busy:.1f}s without finishing a cycle " \
                          f"(bound {bound_s:g}s)"
        return True, "ok"
