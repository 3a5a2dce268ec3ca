"""Benchmark app: the per-key counter (benchmarks/counter.py, benchmarks/counter_peers.py).

A virtual object: per event one state read, one durable step, one state write and one output record.
With BENCH_COUNTER_STEP=0 the handler has no step (get, set, emit: like-for-like with Quix Streams'
counter, which has no durable step). Environment: BENCH_APP (app name = consumer group), BENCH_INPUT,
BENCH_OUTPUT, BENCH_COUNTER_STEP (1, the default, or 0).
"""

from __future__ import annotations

import os

import processor as p

app = p.App(os.environ.get("BENCH_APP", "bench-counter"))
counter = app.virtual_object("counter")
OUTPUT = os.environ.get("BENCH_OUTPUT", "bench-counter-out")
WITH_STEP = os.environ.get("BENCH_COUNTER_STEP", "1") != "0"


def effect(key: str, n: int) -> int:
    return n


@counter.handler()
async def count(ctx: p.ObjectContext, event: dict[str, object]) -> int:
    n = (await ctx.get("count") or 0) + 1
    await ctx.run("effect", effect, ctx.key, n)
    ctx.set("count", n)
    ctx.emit(OUTPUT, {"key": ctx.key, "count": n}, key=ctx.key)
    return n


@counter.handler()
async def count_without_step(ctx: p.ObjectContext, event: dict[str, object]) -> int:
    n = (await ctx.get("count") or 0) + 1
    ctx.set("count", n)
    ctx.emit(OUTPUT, {"key": ctx.key, "count": n}, key=ctx.key)
    return n


app.subscribe(os.environ.get("BENCH_INPUT", "bench-counter-in"), count if WITH_STEP else count_without_step)
