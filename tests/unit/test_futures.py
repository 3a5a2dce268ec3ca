"""``gather`` and ``select`` over durable futures, driven with plain asyncio futures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import processor as p


def _durable(futs: list[asyncio.Future[Any]]) -> list[p.DurableFuture[Any]]:
    return [p.DurableFuture(f, None, seq) for seq, f in enumerate(futs)]  # type: ignore[arg-type]


def test_gather_returns_results_in_argument_order_whatever_finished_first() -> None:
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(3)]
        task = asyncio.ensure_future(p.gather(*_durable(futs)))
        for i in (2, 0, 1):
            futs[i].set_result(f"r{i}")
            await asyncio.sleep(0)
        return await task
    assert asyncio.run(scenario()) == ["r0", "r1", "r2"]


def test_gather_raises_the_first_failure_in_argument_order_not_in_time() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(3)]
        task = asyncio.ensure_future(p.gather(*_durable(futs)))
        futs[2].set_exception(p.TerminalError("third, failed first"))
        await asyncio.sleep(0)
        futs[1].set_result("ok")
        await asyncio.sleep(0)
        assert not task.done(), "gather waits for every future before it raises"
        futs[0].set_exception(p.TerminalError("first, failed last"))
        with pytest.raises(p.TerminalError, match="first, failed last"):
            await task
    asyncio.run(scenario())


def test_select_needs_a_future() -> None:
    with pytest.raises(ValueError):
        p.select()
