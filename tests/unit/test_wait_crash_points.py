"""Crash points and suspension of durable waits, explored on one partition worker over the in-memory
store: commit cycles are driven by hand, and a "crash" applies a cycle to the store without
releasing it, then builds a new worker on that store (what a restarted processor does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import orjson

import processor as p
from processor._engine import routing
from processor._engine.commands import InboxCommand
from processor._engine.partition import PartitionWorker
from processor._engine.records import InRecord, InvocationRow, Status
from processor.state import keys
from processor.state.memory import MemoryStore

STEP_GATE: dict[str, asyncio.Event] = {}


def _app() -> p.App:
    app = p.App("crash", partitions=1)
    svc = app.service("svc")

    async def step() -> str:
        await STEP_GATE["step"].wait()
        return "stepped"

    @svc.handler()
    async def waiter(ctx: p.Context, ev: dict[str, Any]) -> Any:
        try:
            if ev.get("step"):
                await ctx.run("step", step)
            _awk, decision = ctx.awakeable()
            return await decision
        except p.InvocationCancelled:
            return "compensated"

    @svc.handler()
    async def timed(ctx: p.Context, ev: dict[str, Any]) -> Any:
        _awk, decision = ctx.awakeable()
        try:
            return await decision.with_timeout(timedelta(milliseconds=ev["ms"]))
        except TimeoutError:
            return "timed out"

    return app


class Partition:
    """A worker of partition 0 over `store`, with hand-driven commit cycles."""

    def __init__(self, app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        self.app, self.store = app, store
        self.w = PartitionWorker(app=app, partition=0, partitions_total=1, store=store, step_executor=pool,
                                 on_work=lambda: None)
        self.offset = 0
        self.w.load()

    def inbox(self, kind: str, **fields: Any) -> None:
        self.offset += 1
        self.w.on_inbox(InRecord(topic=self.app.inbox_topic, partition=0, offset=self.offset, key=b"k",
                                 value=InboxCommand(kind=kind, **fields).encode()))

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def commit(self, *, release: bool = True) -> None:
        """One cycle: seal, apply to the store and (unless the process 'dies' first) release."""
        await self.settle()
        s = self.w.seal()
        self.store.apply(s.overlay.items(), self.store.changelog_offset())
        if release:
            self.w.committed(s)
            await self.settle()

    def crash(self) -> None:
        self.w.discard()

    def row(self, inv: str) -> InvocationRow:
        data = self.w.state.get(keys.invocation_key(inv))
        assert data is not None
        return InvocationRow.decode(data)


def _run(scenario: Callable[[p.App, MemoryStore, ThreadPoolExecutor], Any]) -> None:
    async def main() -> None:
        STEP_GATE["step"] = asyncio.Event()
        with ThreadPoolExecutor(2) as pool:
            await scenario(_app(), MemoryStore(), pool)
    asyncio.run(main())


INV = routing.invocation_id(0, "test", "1")
AWK_SEQ = 0  # the awakeable's journal position when the handler takes no step first


def _invoke(part: Partition, handler: str = "waiter", **ev: Any) -> None:
    part.inbox("invoke", invocation_id=INV, service="svc", handler=handler, payload=orjson.dumps(ev))


async def _invoke_and_evict(part: Partition, handler: str = "waiter", **ev: Any) -> None:
    """Invoke, commit, evict the invocation (it only waits durably) and commit the eviction."""
    _invoke(part, handler, **ev)
    await part.commit()
    assert part.w.suspend_idle(0.0) == 1, "it only waits on durable completions: evicted"
    await part.commit()


def test_a_woken_invocation_resumes_at_load_when_the_process_dies_right_after_the_wake_commits() -> None:
    async def scenario(app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        part = Partition(app, store, pool)
        await _invoke_and_evict(part)
        assert part.row(INV).status is Status.SUSPENDED

        part.inbox("resolve_awakeable", target_id=routing.awakeable_id(INV, AWK_SEQ), payload=b'"yes"')
        await part.commit(release=False)  # committed; the process dies before it resumes the invocation
        part.crash()

        again = Partition(app, store, pool)
        assert INV in again.w.runtimes, "resumed at load"
        await again.commit()
        await again.commit()
        row = again.row(INV)
        assert (row.status, row.result) == (Status.COMPLETED, b'"yes"')
    _run(scenario)


def test_a_cancel_consumed_before_the_replay_reaches_its_pending_wait_is_delivered_there() -> None:
    async def scenario(app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        part = Partition(app, store, pool)
        _invoke(part)
        await part.commit()
        part.crash()

        again = Partition(app, store, pool)  # the runtime replays from the top...
        again.inbox("cancel", invocation_id=INV)  # ...but the cancel comes in before it ran at all
        await again.commit()
        await again.commit()
        row = again.row(INV)
        assert (row.status, row.result) == (Status.COMPLETED, b'"compensated"')
    _run(scenario)


def test_a_cancel_waiting_for_the_next_await_survives_a_crash() -> None:
    async def scenario(app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        part = Partition(app, store, pool)
        _invoke(part, step=True)
        await part.commit()
        part.inbox("cancel", invocation_id=INV)  # the handler is inside a step: nothing to fail yet
        await part.commit()
        assert part.row(INV).cancelled
        part.crash()

        STEP_GATE["step"].set()
        again = Partition(app, store, pool)
        for _ in range(3):
            await again.commit()
        row = again.row(INV)
        assert (row.status, row.result, row.cancelled) == (Status.COMPLETED, b'"compensated"', False)
    _run(scenario)


def test_an_invocation_waiting_with_a_timeout_is_suspended_and_resumed_by_its_value() -> None:
    async def scenario(app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        part = Partition(app, store, pool)
        await _invoke_and_evict(part, "timed", ms=3_600_000)  # its select helper does not pin it
        part.inbox("resolve_awakeable", target_id=routing.awakeable_id(INV, AWK_SEQ), payload=b'"in time"')
        for _ in range(3):
            await part.commit()
        row = part.row(INV)
        assert (row.status, row.result) == (Status.COMPLETED, b'"in time"')
    _run(scenario)


def test_an_invocation_waiting_with_a_timeout_is_suspended_and_resumed_by_its_timer() -> None:
    async def scenario(app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        part = Partition(app, store, pool)
        await _invoke_and_evict(part, "timed", ms=50)
        part.w.fire_timers(int(time.time() * 1000) + 1000)
        for _ in range(3):
            await part.commit()
        row = part.row(INV)
        assert (row.status, row.result) == (Status.COMPLETED, b'"timed out"')
    _run(scenario)


def test_an_evicted_invocation_holds_no_memory_and_a_kill_still_deletes_its_slot() -> None:
    """Evicted invocations leave ``_durable`` (a hundred thousand sleepers' ids kept pinned the
    allocator's arenas); finishing one out of memory still finds its row and slot in the store."""
    async def scenario(app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        part = Partition(app, store, pool)
        await _invoke_and_evict(part)
        assert INV not in part.w._durable and not part.w.runtimes
        assert store.get(keys.active_key(INV)) is not None
        part.inbox("kill", invocation_id=INV)
        await part.commit()
        assert store.get(keys.active_key(INV)) is None, "the slot went with the kill"
        assert part.row(INV).status is Status.FAILED
    _run(scenario)


def test_an_evicted_invocation_woken_again_deletes_its_slot_when_it_finishes() -> None:
    async def scenario(app: p.App, store: MemoryStore, pool: ThreadPoolExecutor) -> None:
        part = Partition(app, store, pool)
        await _invoke_and_evict(part, "timed", ms=3_600_000)
        part.w.start(part.row(INV))  # what a completion or a retry timer does to an evicted one
        await part.settle()
        assert INV in part.w.runtimes and INV in part.w._durable, (
            "back in memory from the store: durable (a finish in this cycle deletes its row and slot)")
        part.inbox("resolve_awakeable", target_id=routing.awakeable_id(INV, AWK_SEQ), payload=b'"late"')
        for _ in range(3):
            await part.commit()
        assert part.row(INV).status is Status.COMPLETED
        assert store.get(keys.active_key(INV)) is None
    _run(scenario)
