"""Poison events (decision 011): a handler that keeps raising is retried within its policy's bound,
then paused (an exclusive one keeps its key, and says so), dead-lettered (its input to the DLQ, the
key freed) or failed, per handler; on one partition worker over the in-memory store."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import orjson
import pytest

import processor as p
from processor._engine import routing
from processor._engine.records import OutRecord, Status
from processor._engine.stats import DIVERGED, EXHAUSTED, PartitionStats
from tests.unit.test_inbox_invoke import Worker

MS = timedelta(milliseconds=1)
TWICE = p.RetryPolicy(initial_interval=10 * MS, max_attempts=2)


class Recorder(Worker):
    """The test harness's worker, keeping every record its cycles produced to the DLQ."""

    def __init__(self, app: p.App, pool: ThreadPoolExecutor) -> None:
        super().__init__(app, pool)
        self.w.stats = PartitionStats()  # its own counters (a worker built here counts into a shared default)
        self.dead: list[OutRecord] = []
        seal = self.w.seal

        def sealed() -> Any:
            s = seal()
            self.dead += [o for o in s.outputs if o.topic == "inv.dlq"]
            return s
        self.w.seal = sealed  # type: ignore[method-assign]

    async def retry_due(self) -> None:
        """Fire the retry timers (all due within a second here) and commit what they ran."""
        self.w.fire_timers(self.w.now_ms() + 1000)
        await self.commit()


def _app(on_exhausted: p.OnExhausted, fixed: list[bool], ran: list[int]) -> p.App:
    app = p.App("inv", partitions=1)
    orders = app.virtual_object("orders")

    @orders.handler(retry=TWICE, on_exhausted=on_exhausted)
    async def take(ctx: p.ObjectContext, event: dict[str, Any]) -> int:
        ran.append(event["n"])
        ctx.set("last_seen", event["n"])  # journaled and committed before the raise: it stays
        if event.get("poison") and not fixed:
            return int(event["amount"])  # KeyError: the field is missing
        return int(event["n"])
    return app


def _invoke(w: Worker, n: int, *, poison: bool = False) -> str:
    inv = routing.invocation_id(0, "client", "orders/take", "k", str(n))
    w.send("invoke", invocation_id=inv, service="orders", handler="take", key="k",
           payload=orjson.dumps({"n": n, "poison": poison}), notify=True)
    return inv


async def _poison_then_good(w: Recorder) -> tuple[str, str]:
    """Invoke a poison event then a good one of key k, and run the poison one's two attempts."""
    bad, good = _invoke(w, 1, poison=True), _invoke(w, 2)
    await w.commit()
    await w.retry_due()
    return bad, good


def _status(w: Worker) -> dict[str, Status]:
    return {r.id: r.status for r in w.rows()}


def _scenario(on_exhausted: p.OnExhausted, body: Any) -> None:
    fixed: list[bool] = []
    ran: list[int] = []

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            await body(Recorder(_app(on_exhausted, fixed, ran), pool), fixed, ran)
    asyncio.run(main())


def test_the_invocation_backoff_is_known_from_the_attempt_count_alone() -> None:
    policy = p.RetryPolicy(initial_interval=100 * MS, multiplier=2, max_interval=timedelta(seconds=1))
    assert [policy.waited_ms(n) for n in range(1, 8)] == [0, 100, 300, 700, 1500, 2500, 3500]
    assert policy.waited_ms(10_000) == 1500 + 1000 * (10_000 - 5)  # capped: no loop over every attempt


def test_invocation_retries_are_bounded_by_default_and_pause_when_they_run_out() -> None:
    default = p.App("d").config.invocation_retry
    delays = []
    for attempt in range(1, 100):
        delay = default.next_delay_ms(attempt, default.waited_ms(attempt))
        if delay is None:
            break
        delays.append(delay)
    assert len(delays) + 1 == default.max_attempts == 20, "20 attempts, then on_exhausted"
    assert 10 * 60_000 < sum(delays) < 15 * 60_000, "over about 13 minutes of backoff"
    assert p.App("d").config.on_exhausted is p.OnExhausted.PAUSE


def test_a_handler_takes_the_apps_policy_unless_it_names_its_own() -> None:
    policy = p.RetryPolicy(initial_interval=timedelta(seconds=1), max_attempts=3)
    app = p.App("a", invocation_retry=policy, on_exhausted=p.OnExhausted.FAIL)
    svc = app.service("svc")

    @svc.handler()
    async def plain(ctx: p.Context, v: Any) -> None: ...

    @svc.handler(retry=TWICE, on_exhausted=p.OnExhausted.DEAD_LETTER)
    async def own(ctx: p.Context, v: Any) -> None: ...

    assert (app.handler_for(plain).retry, app.handler_for(plain).on_exhausted) == (policy, p.OnExhausted.FAIL)
    assert (app.handler_for(own).retry, app.handler_for(own).on_exhausted) == (TWICE, p.OnExhausted.DEAD_LETTER)


def test_a_bad_on_exhausted_or_retry_is_a_configuration_error() -> None:
    app = p.App("a")
    with pytest.raises(p.ConfigurationError, match=re.escape("p.OnExhausted.PAUSE, p.OnExhausted.DEAD_LETTER")):
        app.service("s").handler(on_exhausted="pause")  # type: ignore[arg-type]
    with pytest.raises(p.ConfigurationError, match=re.escape("retry must be a p.RetryPolicy")):
        app.virtual_object("o").handler(retry=3)  # type: ignore[arg-type]
    with pytest.raises(p.ConfigurationError, match="on_exhausted='dead_letter': must be one of"):
        p.App("b", on_exhausted="dead_letter")


def test_paused_after_its_retries_it_holds_its_key_until_an_operator_retries_it_after_a_fix() -> None:
    async def body(w: Recorder, fixed: list[bool], ran: list[int]) -> None:
        bad, good = _invoke(w, 1, poison=True), _invoke(w, 2)
        await w.commit()
        assert _status(w) == {bad: Status.BACKING_OFF, good: Status.QUEUED}
        await w.retry_due()
        assert _status(w) == {bad: Status.PAUSED, good: Status.QUEUED}, "the key's next one waits"
        [row] = [r for r in w.rows() if r.id == bad]
        assert row.attempt == 2 and row.failure is not None and row.failure.type == "KeyError"
        assert row.retry_at_ms is None, "no retry is due"
        assert row.paused_reason is not None
        assert row.paused_reason.startswith("retries exhausted after 2 attempt(s): KeyError: 'amount'")
        assert "holds key 'k' of orders" in row.paused_reason
        assert w.w.stats.paused_by == {("orders/take", EXHAUSTED): 1}
        await w.retry_due()
        assert ran == [1, 1] and w.dead == [], "paused: no timer runs it again, nothing is dead-lettered"

        w.send("retry", invocation_id=bad)  # not fixed yet: one more attempt, paused again at once
        await w.commit()
        assert _status(w) == {bad: Status.PAUSED, good: Status.QUEUED} and ran == [1, 1, 1]

        fixed.append(True)
        w.send("retry", invocation_id=bad)
        await w.commit()
        assert _status(w) == {bad: Status.COMPLETED, good: Status.COMPLETED}
        assert ran == [1, 1, 1, 1, 2], "the waiting one ran after the fixed one, in order"
        [row] = [r for r in w.rows() if r.id == bad]
        assert (row.paused_reason, row.failure) == (None, None)
    _scenario(p.OnExhausted.PAUSE, body)


def test_a_paused_invocation_can_be_killed_which_frees_its_key() -> None:
    async def body(w: Recorder, fixed: list[bool], ran: list[int]) -> None:
        bad, good = await _poison_then_good(w)
        assert _status(w)[bad] is Status.PAUSED
        w.send("kill", invocation_id=bad)
        await w.commit()
        assert _status(w) == {bad: Status.FAILED, good: Status.COMPLETED} and ran == [1, 1, 2]
    _scenario(p.OnExhausted.PAUSE, body)


def test_dead_lettered_after_its_retries_its_input_goes_to_the_dlq_and_its_key_flows_on() -> None:
    async def body(w: Recorder, fixed: list[bool], ran: list[int]) -> None:
        bad, good = await _poison_then_good(w)
        assert _status(w) == {bad: Status.FAILED, good: Status.COMPLETED} and ran == [1, 1, 2]
        [row] = [r for r in w.rows() if r.id == bad]
        assert row.failure is not None and row.failure.type == "KeyError"
        assert row.failure.message == "dead-lettered to inv.dlq after 2 attempt(s): 'amount'"
        assert [r["status"] for r in w.results] == ["failed", "completed"], "its caller learns it failed"
        [dead] = w.dead
        assert (dead.key, orjson.loads(dead.value or b"")) == (b"k", {"n": 1, "poison": True})
        headers = {k: v.decode() for k, v in dead.headers}
        assert headers == {"processor.error": "KeyError: 'amount'", "processor.error.class": "RetriesExhausted",
                           "processor.error.type": "KeyError", "processor.handler": "orders/take",
                           "processor.invocation.id": bad, "processor.attempts": "2"}
        assert w.w.stats.dead_lettered_by == {("orders/take", EXHAUSTED): 1}
        assert w.w.stats.dead_letters == {"RetriesExhausted": 1} and w.w.stats.paused_by == {}
        # What the failed attempts journaled was committed with the journal: the state write stays
        # (the good event overwrote it here; its own write is the last one).
        assert w.w.read(_state_key("k", "last_seen")) == b"2"
    _scenario(p.OnExhausted.DEAD_LETTER, body)


def test_a_failed_attempts_state_write_outlives_the_dead_lettered_invocation() -> None:
    async def body(w: Recorder, fixed: list[bool], ran: list[int]) -> None:
        bad = _invoke(w, 7, poison=True)
        await w.commit()
        await w.retry_due()
        assert _status(w) == {bad: Status.FAILED} and len(w.dead) == 1
        assert w.w.read(_state_key("k", "last_seen")) == b"7", "nothing rolls back a failed attempt's writes"
    _scenario(p.OnExhausted.DEAD_LETTER, body)


def test_failed_after_its_retries_it_fails_without_a_dead_letter() -> None:
    async def body(w: Recorder, fixed: list[bool], ran: list[int]) -> None:
        bad, good = await _poison_then_good(w)
        assert _status(w) == {bad: Status.FAILED, good: Status.COMPLETED} and w.dead == []
        [row] = [r for r in w.rows() if r.id == bad]
        assert row.failure is not None
        assert row.failure.message == "invocation failed after 2 attempt(s): 'amount'"
        assert w.w.stats.failed_by == {"orders/take": 1} and w.w.stats.dead_lettered_by == {}
    _scenario(p.OnExhausted.FAIL, body)


def test_pause_reasons_are_told_apart_in_the_counters() -> None:
    s = PartitionStats()
    s.paused("o/h", DIVERGED)
    s.paused("o/h", EXHAUSTED)
    s.paused("o/h", EXHAUSTED)
    assert s.paused_by == {("o/h", DIVERGED): 1, ("o/h", EXHAUSTED): 2}


def _state_key(key: str, name: str) -> bytes:
    from processor.state import keys

    return keys.state_key_under(keys.state_prefix("orders", key), name)
