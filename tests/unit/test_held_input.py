"""Input records do not queue behind a running invocation of their key: they are held back in order
(their offsets not committed) until it finished — a queued invocation still queued at a seal has to
be saved, a held record costs nothing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

import processor as p
from processor._engine.partition import PartitionWorker
from processor._engine.records import InRecord
from processor.state.memory import MemoryStore


def _worker(app: p.App, pool: ThreadPoolExecutor) -> PartitionWorker:
    w = PartitionWorker(app=app, partition=0, partitions_total=1, store=MemoryStore(), step_executor=pool,
                        on_work=lambda: None)
    w.load()
    return w


def test_input_behind_a_running_invocation_of_its_key_is_held_in_order_and_routed_when_it_finishes() -> None:
    app = p.App("held")
    obj = app.virtual_object("obj")
    gates: dict[int, asyncio.Event] = {}
    ran: list[int] = []

    @obj.handler()
    async def handle(ctx: p.ObjectContext, ev: Any) -> None:
        ran.append(ev["i"])
        await gates.setdefault(ev["i"], asyncio.Event()).wait()

    app.subscribe("in", handle)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            w = _worker(app, pool)
            binding = app.bindings["in"]
            for i, key in enumerate(["a", "a", "a", "b"]):
                w.on_input(InRecord(topic="in", partition=0, offset=i, key=key.encode(),
                                    value=orjson.dumps({"i": i})), binding)
            await asyncio.sleep(0)
            assert ran == [0], "one invocation of key a runs"
            assert w.holding() and not w.queued, "a's second record is held, and everything behind it"
            assert w.seal().offsets == {"in": 1}, "held records' offsets are not committed"

            gates.setdefault(0, asyncio.Event()).set()
            for _ in range(10):
                await asyncio.sleep(0)
            assert ran == [0, 1], "a's second ran once the first finished; its third waits again"
            assert w.holding() and w.seal().offsets == {"in": 2}
            gates.setdefault(1, asyncio.Event()).set()
            for _ in range(10):
                await asyncio.sleep(0)
            assert ran == [0, 1, 2, 3], "b's record followed a's third in order"
            assert not w.holding() and w.seal().offsets == {"in": 4}
            for i in (2, 3):
                gates.setdefault(i, asyncio.Event()).set()
                for _ in range(10):
                    await asyncio.sleep(0)
            assert not w.runtimes
            w.discard()

    asyncio.run(scenario())


def test_input_is_queued_not_held_behind_a_durable_wait_and_held_input_goes_on_after_the_bound(
        monkeypatch: Any) -> None:
    """Holding is bounded: behind an invocation that sleeps (or waits on a call, an awakeable, or is
    paused) a record queues; and whatever is held is routed once HOLD_MAX_S passed."""
    from datetime import timedelta

    from processor._engine import intake

    app = p.App("held2")
    obj = app.virtual_object("obj")
    gate = asyncio.Event()

    @obj.handler()
    async def handle(ctx: p.ObjectContext, ev: Any) -> None:
        if ev["i"] == 0:
            await ctx.sleep(timedelta(hours=1))
        elif ev["i"] == 2:
            await gate.wait()

    app.subscribe("in", handle)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            w = _worker(app, pool)
            binding = app.bindings["in"]

            def feed(i: int, key: str) -> None:
                w.on_input(InRecord(topic="in", partition=0, offset=i, key=key.encode(),
                                    value=orjson.dumps({"i": i})), binding)
            feed(0, "a")
            for _ in range(3):
                await asyncio.sleep(0)
            feed(1, "a")
            assert not w.holding() and w.queued == 1, "queued behind a sleeper, not held"
            feed(2, "b")
            await asyncio.sleep(0)
            feed(3, "b")
            assert w.holding(), "held behind b's running invocation"
            monkeypatch.setattr(intake, "HOLD_MAX_S", 0.0)
            w.fire_timers(0)
            assert not w.holding() and w.seal().offsets == {"in": 4}, "routed (queued) after the bound"
            gate.set()
            w.discard()

    asyncio.run(scenario())


def test_a_draining_partition_routes_no_held_input_until_the_seal_ends_the_drain() -> None:
    """Before a seal the engine drains: invocations already running finish in this cycle (nothing of
    them is saved), and no held record starts a new one that the seal would have to save."""
    app = p.App("drain")
    obj = app.virtual_object("obj")
    gate = asyncio.Event()
    ran: list[int] = []

    @obj.handler()
    async def handle(ctx: p.ObjectContext, ev: Any) -> None:
        ran.append(ev["i"])
        if ev["i"] == 0:
            await gate.wait()

    app.subscribe("in", handle)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            w = _worker(app, pool)
            for i in range(2):
                w.on_input(InRecord(topic="in", partition=0, offset=i, key=b"a", value=orjson.dumps({"i": i})),
                           app.bindings["in"])
            assert ran == [0] and w.holding()
            w.draining = True
            gate.set()
            for _ in range(10):
                await asyncio.sleep(0)
            assert ran == [0] and not w.runtimes and w.holding(), "the first finished; the held one waits"
            assert w.seal().offsets == {"in": 1}
            w.draining = False
            w.route_held()
            assert ran == [0, 1] and not w.holding()
            w.discard()

    asyncio.run(scenario())


def test_a_handler_that_never_waits_runs_to_its_end_as_its_record_is_routed() -> None:
    """Eager start: no task and no trip through the event loop for a handler that never suspends —
    its key is free again (nothing held) by the time the next record is routed."""
    app = p.App("eager")
    obj = app.virtual_object("obj")

    @obj.handler()
    async def count(ctx: p.ObjectContext, ev: Any) -> None:
        ctx.set("n", (await ctx.get("n") or 0) + 1)
        ctx.emit("out", ev, key=ctx.key)

    app.subscribe("in", count)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            w = _worker(app, pool)
            tasks = len(asyncio.all_tasks())
            for i in range(3):
                w.on_input(InRecord(topic="in", partition=0, offset=i, key=b"a", value=orjson.dumps({"i": i})),
                           app.bindings["in"])
                assert not w.runtimes and not w.holding() and len(asyncio.all_tasks()) == tasks
            s = w.seal()
            assert [o.value for o in s.outputs] == [orjson.dumps({"i": i}) for i in range(3)]
            [(_, n)] = s.overlay.items()  # the cycle writes the key's state once: no invocation of it
            assert n is not None and orjson.loads(n) == 3
            w.discard()

    asyncio.run(scenario())


def test_asyncio_timeout_and_task_groups_in_an_eagerly_started_handler_act_on_that_handler() -> None:
    """An eagerly started handler has no task of its own until it first waits: asyncio.timeout and
    TaskGroup entered before then must still cancel the handler — not the task that routed its
    record (the engine's poll loop)."""
    app = p.App("eager-timeouts")
    obj = app.virtual_object("obj")
    outcome: list[str] = []

    @obj.handler()
    async def timed(ctx: p.ObjectContext, ev: Any) -> None:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            outcome.append("timed out")

    @obj.handler()
    async def grouped(ctx: p.ObjectContext, ev: Any) -> None:
        async def fail() -> None:
            raise ValueError("child")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fail())
                await asyncio.sleep(5)
        except* ValueError:
            outcome.append("group failed")

    app.subscribe("t", timed)
    app.subscribe("g", grouped)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            w = _worker(app, pool)
            router = asyncio.current_task()
            w.on_input(InRecord(topic="t", partition=0, offset=0, key=b"a", value=b"{}"), app.bindings["t"])
            w.on_input(InRecord(topic="g", partition=0, offset=0, key=b"b", value=b"{}"), app.bindings["g"])
            assert asyncio.current_task() is router
            for _ in range(100):
                if len(outcome) == 2:
                    break
                await asyncio.sleep(0.01)  # the routing task goes on waiting: nothing cancelled it
            assert sorted(outcome) == ["group failed", "timed out"]
            w.discard()

    asyncio.run(scenario())


def test_records_the_consumer_delivers_again_are_dropped_not_processed_twice() -> None:
    """Seen in a broker restart test: the consumer fetched a partition from its start again. Routing
    those records again ran their invocations twice and moved the committed offset back."""
    app = p.App("again")
    obj = app.virtual_object("obj")
    ran: list[int] = []
    gate = asyncio.Event()

    @obj.handler()
    async def handle(ctx: p.ObjectContext, ev: Any) -> None:
        ran.append(ev["i"])
        if ev["i"] == 1:
            await gate.wait()

    app.subscribe("in", handle)

    def rec(i: int, key: bytes) -> InRecord:
        return InRecord(topic="in", partition=0, offset=i, key=key, value=orjson.dumps({"i": i}))

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            w = _worker(app, pool)
            w.set_committed({"in": 0})
            for i, key in enumerate([b"a", b"b", b"b"]):  # 2 is held behind 1
                w.on_input(rec(i, key), app.bindings["in"])
            assert ran == [0, 1] and w.holding()
            assert w.seal().offsets == {"in": 2}
            for i, key in enumerate([b"a", b"b", b"b"]):  # the same records again
                w.on_input(rec(i, key), app.bindings["in"])
            assert ran == [0, 1], "nothing ran twice"
            gate.set()
            for _ in range(10):
                await asyncio.sleep(0)
            assert ran == [0, 1, 2], "the held record ran once"
            assert w.seal().offsets == {"in": 3} and w.redelivered == 3
            w.discard()

    asyncio.run(scenario())
