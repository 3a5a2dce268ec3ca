"""Schedule arithmetic: next ticks of intervals and cron expressions in a time zone (DST included),
and what one run fires under each catch-up policy."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import processor as p
from processor._schedule import ScheduleDef, plan

BERLIN = ZoneInfo("Europe/Berlin")
S = 1000
MIN = 60 * S


def ms(*args: int) -> int:
    return round(datetime(*args, tzinfo=BERLIN).timestamp() * 1000)  # type: ignore[misc]


def local(t: int) -> str:
    return datetime.fromtimestamp(t / 1000, BERLIN).isoformat()


def every(seconds: float, **kw: Any) -> ScheduleDef:
    return ScheduleDef.build("s", "svc/h", every=timedelta(seconds=seconds), **kw)


def cron(expr: str, **kw: Any) -> ScheduleDef:
    return ScheduleDef.build("s", "svc/h", cron=expr, tz="Europe/Berlin", **kw)


def ticks(d: ScheduleDef, start: int, n: int) -> list[int]:
    out = [d.next_after(start)]
    while len(out) < n:
        out.append(d.next_after(out[-1]))
    return out


def test_intervals_tick_on_multiples_of_the_interval_since_the_epoch() -> None:
    d = every(60)
    assert d.next_after(125_000) == 180_000
    assert d.next_after(180_000) == 240_000  # strictly after
    assert d.latest_at_or_before(180_000) == 180_000
    assert d.latest_at_or_before(179_999) == 120_000


def test_a_cron_expression_ticks_in_its_time_zone() -> None:
    d = cron("0 3 * * *")
    assert [local(t) for t in ticks(d, ms(2026, 1, 10, 12, 0), 2)] == [
        "2026-01-11T03:00:00+01:00", "2026-01-12T03:00:00+01:00"]
    assert d.latest_at_or_before(ms(2026, 1, 11, 3, 0)) == ms(2026, 1, 11, 3, 0)
    assert d.latest_at_or_before(ms(2026, 1, 11, 2, 59)) == ms(2026, 1, 10, 3, 0)
    utc = ScheduleDef.build("s", "svc/h", cron="0 3 * * *")
    assert utc.next_after(ms(2026, 1, 10, 12, 0)) == ms(2026, 1, 11, 4, 0)  # 03:00 UTC is 04:00 in Berlin


def test_a_job_in_the_hour_skipped_by_dst_runs_once_right_after_the_change() -> None:
    d = cron("30 2 * * *")  # 2026-03-29: 02:00 CET jumps to 03:00 CEST
    assert [local(t) for t in ticks(d, ms(2026, 3, 28, 12, 0), 3)] == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_a_job_in_the_repeated_hour_runs_once_and_wildcard_hours_run_in_both_passes() -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET, so 02:00-02:59 happens twice
    daily = ticks(cron("30 2 * * *"), ms(2026, 10, 24, 12, 0), 2)
    assert [local(t) for t in daily] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    halfhourly = ticks(cron("*/30 * * * *"), ms(2026, 10, 25, 1, 45), 5)
    assert [local(t) for t in halfhourly] == [
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00"]
    assert all(b - a == 30 * MIN for a, b in itertools.pairwise(halfhourly))


def test_a_tick_on_time_fires_alone_and_arms_the_next() -> None:
    d = every(60)
    pl = plan(d, 120_000, 120_250)
    assert (pl.fire, pl.skipped, pl.next_ms) == ((120_000,), 0, 180_000)


def test_ticks_within_grace_all_fire_whatever_the_policy() -> None:
    for policy in p.CatchUp:
        pl = plan(every(1, catch_up=policy), 10 * S, 15 * S + 500)  # 6 ticks, 5.5 s late at most
        assert pl.fire == tuple(range(10 * S, 16 * S, S)), policy
        assert pl.next_ms == 16 * S and pl.skipped == 0


def test_latest_fires_the_most_recent_missed_tick_once_then_carries_on() -> None:
    d = cron("0 3 * * *")  # the 03:00 tick ran 3 days late: three missed, one fires
    pl = plan(d, ms(2026, 1, 11, 3, 0), ms(2026, 1, 14, 12, 0))
    assert [local(t) for t in pl.fire] == ["2026-01-14T03:00:00+01:00"]
    assert pl.skipped == 3
    assert local(pl.next_ms) == "2026-01-15T03:00:00+01:00"


def test_latest_coalesces_missed_ticks_but_keeps_those_within_grace() -> None:
    d = every(10, grace=timedelta(seconds=25))
    pl = plan(d, 100 * S, 200 * S)  # due 100..200; cutoff 175: 100..170 missed, 180..200 on time
    assert pl.fire == (170 * S, 180 * S, 190 * S, 200 * S)
    assert pl.skipped == 7 and pl.next_ms == 210 * S


def test_all_fires_every_missed_tick_in_order_a_bounded_number_per_run() -> None:
    d = every(1, catch_up=p.CatchUp.ALL)
    pl = plan(d, 0, 30 * S)
    assert pl.fire == tuple(range(0, 31 * S, S)) and pl.next_ms == 31 * S
    first = plan(d, 0, 250 * S, limit=100)
    assert first.fire == tuple(range(0, 100 * S, S))
    assert first.next_ms == 100 * S  # already due: the next run starts at once
    second = plan(d, first.next_ms, 250 * S, limit=100)
    assert second.fire[0] == 100 * S and second.skipped == 0


def test_skip_fires_no_missed_tick() -> None:
    d = cron("0 3 * * *", catch_up=p.CatchUp.SKIP)
    pl = plan(d, ms(2026, 1, 11, 3, 0), ms(2026, 1, 14, 12, 0))
    assert pl.fire == () and pl.skipped == 4
    assert local(pl.next_ms) == "2026-01-15T03:00:00+01:00"


def test_a_run_woken_before_its_tick_fires_nothing_and_waits_for_it() -> None:
    pl = plan(every(60), 120_000, 119_000)
    assert (pl.fire, pl.next_ms) == ((), 120_000)


@pytest.mark.parametrize(("kw", "says"), [
    ({"cron": "0 3 * * *", "every": timedelta(minutes=1)}, "exactly one of"),
    ({}, "exactly one of"),
    ({"cron": "61 * * * *"}, "bad cron expression"),
    ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"every": timedelta(milliseconds=10)}, "at least"),
    ({"every": 60}, "at least"),
    ({"every": timedelta(minutes=1), "payload": object()}, "JSON-serializable"),
    ({"every": timedelta(minutes=1), "grace": timedelta(seconds=-1)}, "grace"),
])
def test_a_bad_definition_is_refused_with_its_reason(kw: dict[str, Any], says: str) -> None:
    payload = kw.pop("payload", None)
    with pytest.raises(p.ConfigurationError, match=says):
        ScheduleDef.build("s", "svc/h", payload, **kw)


@pytest.mark.parametrize(("target", "kw", "says"), [
    ("svc", {}, "service/handler"),
    (None, {}, "service/handler"),
    ("svc/h", {"key": 7}, "key must be a string"),
    ("svc/h", {"tz": None}, "tz must be"),
])
def test_a_definition_from_outside_is_checked_field_by_field(target: Any, kw: dict[str, Any], says: str) -> None:
    with pytest.raises(p.ConfigurationError, match=says):
        ScheduleDef.build("s", target, every=timedelta(minutes=1), **kw)


def test_the_digest_names_the_definition() -> None:
    a = ScheduleDef.build("s", "svc/h", {"x": 1}, every=timedelta(minutes=1))
    assert a.digest() == ScheduleDef.build("s", "svc/h", {"x": 1}, every=timedelta(minutes=1)).digest()
    assert a.digest() != ScheduleDef.build("s", "svc/h", {"x": 2}, every=timedelta(minutes=1)).digest()
    assert a.digest() != ScheduleDef.build("s", "svc/h", {"x": 1}, every=timedelta(minutes=2)).digest()
    assert ScheduleDef.from_json(a.to_json()) == a


def test_app_schedule_checks_its_target_and_name() -> None:
    app = p.App("sched")
    obj = app.virtual_object("obj")
    svc = app.service("svc")

    @obj.handler()
    async def touch(ctx: p.ObjectContext, tick: dict[str, Any]) -> None: ...

    @svc.handler()
    async def ping(ctx: p.Context, tick: dict[str, Any]) -> None: ...

    app.schedule("nightly", touch, {"n": 1}, cron="0 3 * * *", tz="Europe/Berlin", key="k1")
    app.schedule("often", "svc/ping", every=timedelta(seconds=5))
    assert app.schedules["nightly"].target == "obj/touch" and app.schedules["nightly"].key == "k1"
    with pytest.raises(p.ConfigurationError, match="keyed"):
        app.schedule("nokey", touch, every=timedelta(seconds=5))
    with pytest.raises(p.ConfigurationError, match="no handler"):
        app.schedule("ghost", "svc/nope", every=timedelta(seconds=5))
    with pytest.raises(p.ConfigurationError, match="twice"):
        app.schedule("often", ping, every=timedelta(seconds=5))
    # the built-in object is there to run them, but is not one of the app's own handlers
    assert set(app.handlers) == {"obj/touch", "svc/ping"}
    assert app.handler("processor.schedule/tick") is not None


class _SendingDriver:
    """Just enough of an invocation for ``ctx.schedule``: the app's targets and the sends made."""

    def __init__(self, app: p.App) -> None:
        self.app = app
        self.sent: list[tuple[str, Any, str | None]] = []

    def resolve_target(self, target: Any, key: str | None) -> Any:
        h = self.app.handler(target) if isinstance(target, str) else self.app.handler_for(target)
        if h is None:
            raise p.TerminalError(f"no handler {target!r}")
        return h

    def send(self, target: str, arg: Any, key: str | None, delay: timedelta | None) -> str:
        self.sent.append((target, arg, key))
        return "inv-0-x"


def test_a_handler_schedules_by_a_one_way_send_and_a_bad_definition_fails_it() -> None:
    app = p.App("sched")
    svc = app.service("svc")

    @svc.handler()
    async def ping(ctx: p.Context, tick: dict[str, Any]) -> None: ...

    driver = _SendingDriver(app)
    ctx = p.Context(driver)  # type: ignore[arg-type]
    ctx.schedule("often", ping, {"n": 1}, every=timedelta(seconds=5))
    ctx.unschedule("often")
    target, arg, key = driver.sent[0]
    assert (target, key) == ("processor.schedule/ensure", "often")
    assert ScheduleDef.from_json(arg) == ScheduleDef.build("often", "svc/ping", {"n": 1}, every=timedelta(seconds=5))
    assert driver.sent[1] == ("processor.schedule/remove", None, "often")
    with pytest.raises(p.TerminalError, match="bad cron"):
        ctx.schedule("bad", ping, cron="nope")
    with pytest.raises(p.TerminalError, match="no handler"):
        ctx.schedule("bad", "svc/nope", every=timedelta(seconds=5))
    assert len(driver.sent) == 2
