"""Benchmark app: a service handler with ten sequential durable steps (benchmarks/ten_steps.py).

Each `ctx.run` result is released to the handler only after the transaction journaling it committed,
so one invocation is at least ten commit cycles. Environment: BENCH_APP, BENCH_INPUT, BENCH_OUTPUT.
"""

from __future__ import annotations

import os

import processor as p

app = p.App(os.environ.get("BENCH_APP", "bench-ten-steps"))
svc = app.service("steps")
OUTPUT = os.environ.get("BENCH_OUTPUT", "bench-ten-steps-out")
STEPS = 10


def step(i: int) -> int:
    return i


@svc.handler()
async def ten_steps(ctx: p.Context, event: dict[str, object]) -> int:
    total = 0
    for i in range(STEPS):
        total += await ctx.run(f"s{i}", step, i)
    ctx.emit(OUTPUT, {"seq": event["seq"], "key": event["key"], "total": total}, key=str(event["key"]))
    return total


app.subscribe(os.environ.get("BENCH_INPUT", "bench-ten-steps-in"), ten_steps)
