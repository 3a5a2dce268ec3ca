"""A key's queue is bounded: with one invocation running and one queued, later input records are
held back in order (their offsets not committed) instead of queued — a queued invocation still
queued at a seal has to be saved, a held record costs nothing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

import processor as p
from processor._engine.partition import InRecord, PartitionWorker
from state.memory import MemoryStore


def test_input_beyond_a_full_key_queue_is_held_in_order_and_routed_as_the_queue_drains() -> None:
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
            w = PartitionWorker(app=app, partition=0, partitions_total=1, store=MemoryStore(), step_executor=pool,
                                on_work=lambda: None)
            w.load()
            binding = app.bindings["in"]
            for i, key in enumerate(["a", "a", "a", "b"]):
                w.on_input(InRecord(topic="in", partition=0, offset=i, key=key.encode(),
                                    value=orjson.dumps({"i": i})), binding)
            await asyncio.sleep(0)
            assert ran == [0], "one invocation of key a runs, one waits queued"
            assert w.holding(), "the third record of a is held, and b's record behind it"
            assert w.seal().offsets == {"in": 2}, "held records' offsets are not committed"

            gates.setdefault(0, asyncio.Event()).set()
            for _ in range(10):
                await asyncio.sleep(0)
            assert ran == [0, 1, 3], "a's second ran; b's record was routed once a's third fit the queue"
            assert not w.holding()
            assert w.seal().offsets == {"in": 4}
            for i in (1, 2, 3):
                gates.setdefault(i, asyncio.Event()).set()
                for _ in range(10):
                    await asyncio.sleep(0)
            assert sorted(ran) == [0, 1, 2, 3] and not w.runtimes
            w.discard()

    asyncio.run(scenario())
