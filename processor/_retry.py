"""Retry policies for steps and invocations, and what happens to an invocation whose retries ran out."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff: attempt ``n`` (1-based) failing waits ``initial * multiplier**(n-1)``,
    capped at ``max_interval``. Gives up after ``max_attempts`` attempts or once the next wait would
    take it past ``max_duration`` (``None``: no limit): for a step, the time since its first attempt;
    for an invocation, the backoff between its attempts so far (``waited_ms``)."""

    initial_interval: timedelta = timedelta(milliseconds=100)
    multiplier: float = 2.0
    max_interval: timedelta = timedelta(seconds=30)
    max_attempts: int | None = None
    max_duration: timedelta | None = None

    def __post_init__(self) -> None:
        if self.initial_interval <= timedelta(0):
            raise ValueError("RetryPolicy.initial_interval must be positive")
        if self.multiplier < 1.0:
            raise ValueError("RetryPolicy.multiplier must be >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")

    def next_delay_ms(self, attempts: int, elapsed_ms: int) -> int | None:
        """Delay before the attempt after `attempts` failed ones, or None when the policy gives up."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return None
        delay_ms = self._delay_ms(attempts)
        if self.max_duration is not None and elapsed_ms + delay_ms > self.max_duration.total_seconds() * 1000:
            return None
        return delay_ms

    def waited_ms(self, attempts: int) -> int:
        """The backoff this policy prescribes between `attempts` attempts (the delays after attempts
        1 .. attempts-1), bounds aside: how long a run of failures has waited, known from the attempt
        count alone, so a restart or an operator's early retry does not change it."""
        total = 0
        cap = int(self.max_interval.total_seconds() * 1000)
        for n in range(1, attempts):
            delay = self._delay_ms(n)
            if delay >= cap:  # capped from here on
                return total + delay * (attempts - n)
            total += delay
        return total

    def _delay_ms(self, attempts: int) -> int:
        cap = self.max_interval.total_seconds()
        initial = self.initial_interval.total_seconds()
        # Grow in log space so a policy retrying for days never overflows a float.
        if self.multiplier == 1.0 or (attempts - 1) * math.log(self.multiplier) < math.log(max(cap / initial, 1.0)):
            delay = min(initial * self.multiplier ** (attempts - 1), cap)
        else:
            delay = cap
        return int(delay * 1000)


class OnExhausted(enum.Enum):
    """What happens to an invocation once its handler's retry policy gives up (``on_exhausted=`` on a
    handler decorator, or ``App(on_exhausted=...)`` for every handler)."""

    PAUSE = "pause"              # stays, paused (an exclusive one keeps its key); ``processor retry`` runs it again
    DEAD_LETTER = "dead_letter"  # its input goes to ``<app>.dlq`` and it fails; the key's next events run
    FAIL = "fail"                # it fails (callers get the error); no dead-letter record
