"""The built-in schedule object on one partition worker over the in-memory store, with a fake clock:
each tick sends the target once and re-arms (also when ensured twice), a replacement that races a
due tick keeps that tick (under the old definition) and starts the new one after it, and a removed
schedule's pending tick does nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import orjson
import pytest

import processor as p
from processor import schemas
from processor._engine.records import InRecord
from processor._schedule import ScheduleDef
from tests.unit.test_inbox_invoke import Worker

T0 = 1_800_000_000_000  # a whole second, in epoch ms


class Clock:
    def __init__(self) -> None:
        self.ms = T0 + 400

    def __call__(self) -> float:
        return self.ms / 1000


def _app() -> p.App:
    app = p.App("inv", partitions=1)  # the name Worker reads outputs under
    svc = app.service("ticks")

    @svc.handler()
    async def record(ctx: p.Context, tick: dict[str, Any]) -> None: ...

    return app


class Harness(Worker):
    """A partition worker (test_inbox_invoke's) whose inbox commands are delivered back to it, but
    for the target's invocations, which are recorded as (at_ms, payload)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__(_app(), pool)
        self.fired: list[tuple[int, Any]] = []

    async def settle(self) -> None:
        await self.commit()
        while self.inbox:
            batch, self.inbox = self.inbox, []
            for cmd in batch:
                if cmd["service"] == "ticks":
                    tick = orjson.loads(cmd["payload"])
                    self.fired.append((tick["at_ms"], tick["payload"]))
                else:
                    self.offset += 1
                    self.w.on_inbox(InRecord(topic="inv.inbox", partition=0, offset=self.offset, key=b"k",
                                             value=schemas.encode("InboxCommand", cmd)))
            await self.commit()

    def ensure(self, payload: Any) -> None:
        d = ScheduleDef.build("s", "ticks/record", payload, every=timedelta(seconds=1))
        self.send("invoke", invocation_id=f"inv-0-e{self.offset}", service="processor.schedule", handler="ensure",
                  key="s", payload=orjson.dumps(d.to_json()))

    def remove(self) -> None:
        self.send("invoke", invocation_id=f"inv-0-r{self.offset}", service="processor.schedule", handler="remove",
                  key="s", payload=b"null")


def _run(monkeypatch: pytest.MonkeyPatch, scenario: Callable[[Harness, Clock], Awaitable[None]]) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            h = Harness(pool)
            h.w._wall = clock  # the worker's wall clock (timers, ctx.time) is the fake one too
            await scenario(h, clock)
    asyncio.run(main())


async def _advance(h: Harness, clock: Clock, to_ms: int) -> None:
    clock.ms = to_ms
    h.w.fire_timers(to_ms)
    await h.settle()


async def _first_tick(h: Harness, clock: Clock) -> None:
    """Ensure the schedule ({"v": 1} every second) and let its first tick fire."""
    h.ensure({"v": 1})
    await h.settle()
    await _advance(h, clock, T0 + 1000 + 20)


def test_each_tick_sends_the_target_once_even_when_the_schedule_is_ensured_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(h: Harness, clock: Clock) -> None:
        h.ensure({"v": 1})
        h.ensure({"v": 1})
        await h.settle()
        assert h.fired == []
        for k in range(1, 4):
            await _advance(h, clock, T0 + k * 1000 + 20)
        assert h.fired == [(T0 + k * 1000, {"v": 1}) for k in range(1, 4)]
    _run(monkeypatch, scenario)


def test_a_replacement_racing_a_due_tick_fires_it_under_the_old_definition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(h: Harness, clock: Clock) -> None:
        await _first_tick(h, clock)
        clock.ms = T0 + 2000 + 30  # tick 2 is due, its timer has not fired yet: the replacement comes first
        h.ensure({"v": 2})
        await h.settle()
        assert h.fired == [(T0 + 1000, {"v": 1}), (T0 + 2000, {"v": 1})]
        await _advance(h, clock, T0 + 2000 + 40)  # the old chain's tick: dropped
        await _advance(h, clock, T0 + 3000 + 20)
        assert h.fired == [(T0 + 1000, {"v": 1}), (T0 + 2000, {"v": 1}), (T0 + 3000, {"v": 2})]
    _run(monkeypatch, scenario)


def test_a_removed_schedules_pending_tick_does_nothing_and_it_can_come_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(h: Harness, clock: Clock) -> None:
        await _first_tick(h, clock)
        h.remove()
        await h.settle()
        await _advance(h, clock, T0 + 5000)
        assert h.fired == [(T0 + 1000, {"v": 1})]
        h.ensure({"v": 1})  # the same definition as before the removal: a new chain
        await h.settle()
        await _advance(h, clock, T0 + 6000 + 20)
        assert h.fired == [(T0 + 1000, {"v": 1}), (T0 + 6000, {"v": 1})]
    _run(monkeypatch, scenario)
