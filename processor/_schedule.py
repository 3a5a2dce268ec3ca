"""Schedules: what one is (a cron expression or an interval, a time zone, a target and a payload, a
catch-up policy) and the pure arithmetic of its ticks.

A tick is an instant in epoch milliseconds. Cron expressions are evaluated by cronsim in the
schedule's time zone, with Debian cron's behaviour at DST changes (a job in the skipped hour runs
once right after the change; one in the repeated hour runs once, wildcard-hour jobs run in both
passes). Intervals are fixed durations aligned to the Unix epoch (``every=1h`` ticks on the hour, in
UTC), so every instance computes the same ticks. The built-in object that runs them is
``processor/_schedules.py``; docs/decisions/010-schedules.md has the argument.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from cronsim import CronSim, CronSimError

from processor._errors import ConfigurationError

SERVICE = "processor.schedule"  # the built-in object that runs schedules (processor/_schedules.py)
ENSURE, REMOVE = f"{SERVICE}/ensure", f"{SERVICE}/remove"
MIN_EVERY = timedelta(seconds=1)     # each tick costs two invocations and a journaled clock read
FIRE_LIMIT = 100                     # ticks one run fires at most (catch_up=ALL after a long outage)
DEFAULT_GRACE = timedelta(seconds=60)


class CatchUp(enum.Enum):
    """What a schedule does with ticks it *missed*: ticks that run more than ``grace`` late because
    no instance ran (or the schedule's partition was down). Ticks within ``grace`` always fire."""

    LATEST = "latest"  # fire the most recent missed tick once, then carry on from now (the default)
    ALL = "all"        # fire every missed tick, oldest first, each with its own tick time
    SKIP = "skip"      # fire none of them; carry on with the next tick


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleDef:
    """One schedule. `name` is its key (one schedule per name); `target` is ``"service/handler"``,
    `key` the target's object or workflow key. Build it with ``ScheduleDef.build``, which checks it."""

    name: str
    target: str
    key: str | None
    payload: Any
    cron: str | None
    every_ms: int | None
    tz: str
    catch_up: CatchUp
    grace_ms: int

    @staticmethod
    def build(name: str, target: str, payload: Any = None, *, cron: str | None = None,
              every: timedelta | None = None, tz: str = "UTC", key: str | None = None,
              catch_up: CatchUp = CatchUp.LATEST, grace: timedelta = DEFAULT_GRACE) -> ScheduleDef:
        """A checked definition; raises ConfigurationError naming what is wrong."""
        where = f"schedule {name!r}"
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a schedule needs a non-empty string name, got {name!r}")
        service, _, handler = target.partition("/") if isinstance(target, str) else ("", "", "")
        if not service or not handler:
            raise ConfigurationError(f"{where}: target must be 'service/handler', got {target!r}")
        if key is not None and not isinstance(key, str):
            raise ConfigurationError(f"{where}: key must be a string, got {key!r}")
        if not isinstance(tz, str):
            raise ConfigurationError(f"{where}: tz must be an IANA zone name, got {tz!r}")
        if (cron is None) == (every is None):
            raise ConfigurationError(f"{where}: give exactly one of cron=... or every=...")
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(f"{where}: unknown time zone {tz!r} (an IANA name such as "
                                     "'Europe/Berlin' or 'UTC')") from None
        every_ms = None
        if cron is not None:
            try:
                CronSim(cron, datetime.now(zone))
            except (CronSimError, TypeError, ValueError) as e:
                raise ConfigurationError(f"{where}: bad cron expression {cron!r}: {e}") from None
        else:
            assert every is not None
            if not isinstance(every, timedelta) or every < MIN_EVERY:
                raise ConfigurationError(f"{where}: every= must be a timedelta of at least {MIN_EVERY}, "
                                         f"got {every!r}")
            every_ms = int(every.total_seconds() * 1000)
        if not isinstance(catch_up, CatchUp):
            raise ConfigurationError(f"{where}: catch_up must be a CatchUp, got {catch_up!r}")
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ConfigurationError(f"{where}: grace must be a non-negative timedelta, got {grace!r}")
        try:
            orjson.dumps(payload)
        except TypeError as e:
            raise ConfigurationError(f"{where}: the payload must be JSON-serializable: {e}") from None
        return ScheduleDef(name=name, target=target, key=key, payload=payload, cron=cron, every_ms=every_ms,
                           tz=tz, catch_up=catch_up, grace_ms=int(grace.total_seconds() * 1000))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "key": self.key, "payload": self.payload,
                "cron": self.cron, "every_ms": self.every_ms, "tz": self.tz, "catch_up": self.catch_up.value,
                "grace_ms": self.grace_ms}

    @staticmethod
    def from_json(d: dict[str, Any]) -> ScheduleDef:
        return ScheduleDef(name=d["name"], target=d["target"], key=d["key"], payload=d["payload"], cron=d["cron"],
                           every_ms=d["every_ms"], tz=d["tz"], catch_up=CatchUp(d["catch_up"]),
                           grace_ms=d["grace_ms"])

    def digest(self) -> str:
        """The same for the same definition, in any process: ensuring it again changes nothing."""
        return hashlib.blake2b(orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS),
                               digest_size=12).hexdigest()

    # -- tick arithmetic ---------------------------------------------------------------------------

    def next_after(self, ms: int) -> int:
        """The first tick strictly after instant `ms`."""
        if self.every_ms is not None:
            return (ms // self.every_ms + 1) * self.every_ms
        assert self.cron is not None
        zone = ZoneInfo(self.tz)
        return _ms(next(CronSim(self.cron, datetime.fromtimestamp(ms / 1000, zone))))

    def latest_at_or_before(self, ms: int) -> int:
        """The last tick at or before instant `ms`."""
        if self.every_ms is not None:
            return (ms // self.every_ms) * self.every_ms
        assert self.cron is not None
        zone = ZoneInfo(self.tz)
        # cronsim's reverse iteration excludes its start: start one millisecond later
        return _ms(next(CronSim(self.cron, datetime.fromtimestamp((ms + 1) / 1000, zone), reverse=True)))

    def local_time(self, ms: int) -> str:
        """Tick `ms` as ISO 8601 in the schedule's time zone."""
        return datetime.fromtimestamp(ms / 1000, ZoneInfo(self.tz)).isoformat(timespec="milliseconds")


def _ms(dt: datetime) -> int:
    return round(dt.astimezone(UTC).timestamp() * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What one run of a schedule does: fire these ticks (in order), skip `skipped` missed ones,
    and come back at tick `next_ms`."""

    fire: tuple[int, ...]
    skipped: int
    next_ms: int


def plan(d: ScheduleDef, at_ms: int, now_ms: int, limit: int = FIRE_LIMIT) -> Plan:
    """A run for tick `at_ms` (the one it was armed for) that woke at `now_ms`.

    Due are the ticks from `at_ms` to `now_ms`. Those at most ``grace`` old fire; older ones are
    missed and handled by the catch-up policy. A run fires at most `limit` ticks; the next run
    continues at once from where it stopped."""
    if now_ms < at_ms:  # woken early (clocks of two instances disagree): come back at the tick
        return Plan(fire=(), skipped=0, next_ms=at_ms)
    cutoff = now_ms - d.grace_ms  # ticks before it are missed
    if d.catch_up is CatchUp.ALL:
        fire = _ticks_from(d, at_ms, now_ms, limit)
        nxt = d.next_after(fire[-1])
        return Plan(fire=tuple(fire), skipped=0, next_ms=nxt)
    first_on_time = at_ms if at_ms >= cutoff else d.next_after(cutoff - 1)
    on_time = _ticks_from(d, first_on_time, now_ms, limit) if first_on_time <= now_ms else []
    missed_latest = d.latest_at_or_before(cutoff - 1) if at_ms < cutoff else None
    missed = 0 if missed_latest is None else _count(d, at_ms, missed_latest)
    fire = list(on_time)
    if d.catch_up is CatchUp.LATEST and missed_latest is not None:
        fire.insert(0, missed_latest)
        missed -= 1
    nxt = d.next_after(on_time[-1]) if len(on_time) == limit else d.next_after(now_ms)
    return Plan(fire=tuple(fire), skipped=missed, next_ms=nxt)


def _ticks_from(d: ScheduleDef, first: int, until: int, limit: int) -> list[int]:
    """Ticks from tick `first` up to `until` (inclusive), at most `limit`; `first` is a tick."""
    out = [first]
    while len(out) < limit and (t := d.next_after(out[-1])) <= until:
        out.append(t)
    return out


def _count(d: ScheduleDef, first: int, last: int, most: int = 10_000) -> int:
    """How many ticks from `first` to `last` (inclusive): for the log, exact for intervals, counted up
    to `most` for cron expressions."""
    if d.every_ms is not None:
        return (last - first) // d.every_ms + 1
    n, t = 1, first
    while t < last and n < most:
        t = d.next_after(t)
        n += 1
    return n
