"""Benchmark app: the per-key counter (benchmarks/counter.py).

A virtual object: per event one state read, one durable step, one state write and one output record.
Environment: BENCH_APP (app name = consumer group), BENCH_INPUT, BENCH_OUTPUT.
"""

from __future__ import annotations

import os

import processor as p

app = p.App(os.environ.get("BENCH_APP", "bench-counter"))
counter = app.virtual_object("counter")
OUTPUT = os.environ.get("BENCH_OUTPUT", "bench-counter-out")


def effect(key: str, n: int) -> int:
    return n


@counter.handler()
async def count(ctx: p.ObjectContext, event: dict[str, object]) -> int:
    n = (await ctx.get("count") or 0) + 1
    await ctx.run("effect", effect, ctx.key, n)
    ctx.set("count", n)
    ctx.emit(OUTPUT, {"key": ctx.key, "count": n}, key=ctx.key)
    return n


app.subscribe(os.environ.get("BENCH_INPUT", "bench-counter-in"), count)
