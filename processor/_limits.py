"""Per-handler limits: how many invocations of a handler may run at once, and how fast they may start
(docs/decisions/014-limits.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from processor._errors import ConfigurationError


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    """At most `per_second` starts of a handler per second over the app, `burst` of them at once after
    a quiet spell (default: one second's worth). Enforced per partition: each of the app's P
    partitions starts at most ``per_second / P`` per second with a bucket of ``ceil(burst / P)``."""

    per_second: float
    burst: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.per_second, bool) or not isinstance(self.per_second, int | float) \
                or not math.isfinite(self.per_second) or self.per_second <= 0:
            raise ConfigurationError(f"p.Rate(per_second={self.per_second!r}): must be a number > 0")
        if self.burst is not None and (isinstance(self.burst, bool) or not isinstance(self.burst, int)
                                       or self.burst < 1):
            raise ConfigurationError(f"p.Rate(burst={self.burst!r}): must be an int >= 1 or None")

    def per_partition(self, partitions: int) -> tuple[int, int]:
        """This rate on one of `partitions` partitions: (microseconds between starts, bucket size)."""
        interval_us = max(1, round(1_000_000 * partitions / self.per_second))
        burst = self.burst if self.burst is not None else math.ceil(self.per_second)
        return interval_us, max(1, math.ceil(burst / partitions))


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """A handler's limits: at most `concurrency` invocations started and not finished (per partition,
    or per key with `per_key`), and starts at most at `rate`. One queue per partition (or per key) holds
    the invocations that wait, in arrival order."""

    concurrency: int | None
    per_key: bool
    rate: Rate | None


def checked_limit(where: str, *, concurrency: object, concurrency_per_key: object, rate: object,
                  exclusive: bool) -> Limit | None:
    """The limit a handler decorator's arguments ask for (None: none), or a ConfigurationError."""
    for name, value in (("concurrency", concurrency), ("concurrency_per_key", concurrency_per_key)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"{where}: {name}={value!r} must be an int >= 1 or None")
    if rate is not None and not isinstance(rate, Rate):
        raise ConfigurationError(f"{where}: rate={rate!r} must be a p.Rate(per_second=..., burst=...)")
    if concurrency is None and concurrency_per_key is None and rate is None:
        return None
    if exclusive:
        raise ConfigurationError(f"{where}: an exclusive handler runs one invocation per key already; limits "
                                 "(concurrency, concurrency_per_key, rate) are for service and shared handlers")
    if concurrency_per_key is not None and (concurrency is not None or rate is not None):
        raise ConfigurationError(f"{where}: concurrency_per_key cannot be combined with concurrency or rate "
                                 "(one queue per handler: per key, or per partition)")
    assert rate is None or isinstance(rate, Rate)
    if concurrency_per_key is not None:
        assert isinstance(concurrency_per_key, int)
        return Limit(concurrency=concurrency_per_key, per_key=True, rate=None)
    assert concurrency is None or isinstance(concurrency, int)
    return Limit(concurrency=concurrency, per_key=False, rate=rate)
