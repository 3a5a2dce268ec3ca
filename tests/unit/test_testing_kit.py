"""``processor.testing.TestRuntime``: handlers run by the engine's own partition workers and commit
cycle over in-memory twins, on a clock the test moves; always-replay mode catches nondeterminism."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import processor as p
from processor.testing import NotFinished, ReplayDivergence, TestRuntime

STARTS: list[str] = []
NAMES = itertools.count()


def _app() -> p.App:
    app = p.App("kit", partitions=3)
    svc = app.service("svc")
    counter = app.virtual_object("counter")

    @svc.handler()
    async def week(ctx: p.Context, n: int) -> dict[str, Any]:
        STARTS.append("week")
        before = await ctx.time()
        doubled = await ctx.run("double", lambda: n * 2)
        await ctx.sleep(timedelta(days=7))
        return {"doubled": doubled, "slept_s": await ctx.time() - before}

    @svc.handler()
    async def drifting(ctx: p.Context, n: int) -> int:
        STARTS.append("drifting")
        first = await ctx.run(f"step-{next(NAMES)}", lambda: n)  # a name that differs on every run
        return int(await ctx.run("second", lambda: first + 1))

    @counter.handler()
    async def add(ctx: p.ObjectContext, n: int) -> int:
        total = (await ctx.get("total") or 0) + n
        ctx.set("total", total)
        ctx.emit("totals", {"key": ctx.key, "total": total}, key=ctx.key)
        return int(total)

    @svc.handler()
    async def fan_out(ctx: p.Context, keys: list[str]) -> list[int]:
        return [await ctx.call(add, 10, key=k) for k in keys]  # calls to objects on other partitions

    app.subscribe("numbers", add)
    return app


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    STARTS.clear()
    yield


def test_a_week_long_sleep_completes_when_the_clock_is_advanced_and_takes_milliseconds() -> None:
    started = time.monotonic()
    with TestRuntime(_app(), start=datetime(2030, 5, 1, tzinfo=UTC)) as rt:
        inv = rt.submit("svc/week", 21)
        rt.advance(timedelta(days=6, hours=23))
        with pytest.raises(NotFinished):
            rt.result(inv)
        rt.advance(timedelta(hours=1))
        assert rt.result(inv) == {"doubled": 42, "slept_s": 7 * 86400.0}, "ctx.time() reads the runtime's clock"
        assert rt.now == datetime(2030, 5, 8, tzinfo=UTC)
        journal = rt.journal(inv)
        assert [(e.kind, e.state) for e in journal] == [
            ("time", "done"), ("run", "done"), ("sleep", "done"), ("time", "done")]
        t0 = int(datetime(2030, 5, 1, tzinfo=UTC).timestamp() * 1000)
        assert [(e.started_ms, e.ended_ms) for e in journal] == [
            (None, None), (t0, t0), (t0, t0 + 7 * 86_400_000), (None, None)], \
            "steps and waits keep their timeline (the sleep began at the start and ended a week later)"
    assert time.monotonic() - started < 5


def test_records_calls_state_and_emitted_records_go_through_the_engine() -> None:
    with TestRuntime(_app()) as rt:
        rt.send("numbers", 1, key="a")
        rt.send("numbers", 2, key="a")
        assert rt.invoke("svc/fan_out", ["a", "b", "c"]) == [13, 10, 10]
        assert rt.state("counter", "a") == {"total": 13}
        assert [(e["key"], e["total"]) for e in rt.emitted("totals")] == [
            ("a", 1), ("a", 3), ("a", 13), ("b", 10), ("c", 10)]
        assert rt.log.group_offsets["kit"], "offsets committed with the transactions, as the engine does"


def test_always_replay_replays_each_invocation_from_its_journal_after_every_step() -> None:
    with TestRuntime(_app()) as rt:
        inv = rt.submit("svc/week", 1)
        assert rt.status(inv) == "running"
        rt.advance(timedelta(days=7))  # idle past suspend_after: out of memory, replayed when the timer fires
        assert rt.result(inv)["doubled"] == 2
    assert STARTS == ["week", "week"], "started, then replayed once after its sleep, as in production"
    STARTS.clear()
    with TestRuntime(_app(), always_replay=True) as rt:
        inv = rt.submit("svc/week", 1)
        rt.advance(timedelta(days=7))
        assert rt.result(inv)["doubled"] == 2
    assert STARTS.count("week") >= 4, f"replayed after its time, its step and its sleep too: {STARTS}"


def test_always_replay_fails_a_handler_whose_replay_calls_another_action() -> None:
    with TestRuntime(_app()) as rt:
        assert rt.invoke("svc/drifting", 1) == 2, "run once straight through, its nondeterminism goes unseen"
    with TestRuntime(_app(), always_replay=True) as rt, pytest.raises(ReplayDivergence) as diverged:
        rt.invoke("svc/drifting", 1)
    assert "run('step-" in str(diverged.value) and "#0" in str(diverged.value)


def test_bad_arguments_are_refused_with_the_reason() -> None:
    with TestRuntime(_app()) as rt:
        with pytest.raises(ValueError, match="not an input topic"):
            rt.send("nope", 1)
        with pytest.raises(ValueError, match="service/handler"):
            rt.submit("svc", 1)
        with pytest.raises(ValueError, match="forward"):
            rt.advance(timedelta(seconds=-1))
        with pytest.raises(p.TerminalError) as unknown:
            rt.invoke("svc/missing", 1)
        assert unknown.value.error_type == "UnknownHandler"


def test_a_failing_step_backs_off_on_the_runtime_clock_without_counting_as_a_running_body() -> None:
    """A step between attempts is no body running: the kit settles (the engine's drain does not wait
    for it either) and the retry comes when the clock passes its backoff."""
    tries: list[int] = []
    app = p.App("flaky", partitions=1)

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise RuntimeError("down")
        return "up"

    @app.service("svc").handler()
    async def call(ctx: p.Context, _: Any) -> str:
        return str(await ctx.run("flaky", flaky, retry=p.RetryPolicy(initial_interval=timedelta(seconds=10))))

    with TestRuntime(app, always_replay=True, timeout=timedelta(seconds=5)) as rt:
        inv = rt.submit("svc/call", None)
        assert len(tries) == 1 and [(e.name, e.state) for e in rt.journal(inv)] == [("flaky", "retrying")]
        assert sum(w.bodies_running for w in rt._workers.values()) == 0
        rt.advance(timedelta(seconds=9))
        assert len(tries) == 1
        rt.advance(timedelta(seconds=1))
        assert len(tries) == 2
        rt.advance(timedelta(seconds=20))
        assert (len(tries), rt.result(inv)) == (3, "up")
