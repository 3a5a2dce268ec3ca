"""Retry policies for steps and invocations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff: attempt ``n`` (1-based) failing waits ``initial * multiplier**(n-1)``,
    capped at ``max_interval``. Gives up after ``max_attempts`` attempts or once ``max_duration`` has
    passed since the first attempt (``None``: no limit)."""

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
        cap = self.max_interval.total_seconds()
        initial = self.initial_interval.total_seconds()
        # Grow in log space so a policy retrying for days never overflows a float.
        if self.multiplier == 1.0 or (attempts - 1) * math.log(self.multiplier) < math.log(max(cap / initial, 1.0)):
            delay = min(initial * self.multiplier ** (attempts - 1), cap)
        else:
            delay = cap
        delay_ms = int(delay * 1000)
        if self.max_duration is not None and elapsed_ms + delay_ms > self.max_duration.total_seconds() * 1000:
            return None
        return delay_ms
