"""Benchmark peer: the ten-step handler on Restate's Python SDK (benchmarks/restate_steps.py).

Run as its own process: `python -m benchmarks.apps.restate_steps_app`, an HTTP/2 (h2c) endpoint served
by hypercorn that restate-server calls. The same handler as benchmarks/apps/ten_steps_app.py: ten
sequential `ctx.run_typed(f"s{i}", step, i)` with a trivial `step`, then the sum as the response.
Environment: BENCH_PORT (where to listen), BENCH_DEADLINE (a time.time()): then, or as soon as its parent
(the benchmark) is gone, it exits.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config

STEPS = 10
svc = restate.Service("BenchSteps")


def step(i: int) -> int:
    return i


@svc.handler()
async def ten_steps(ctx: restate.Context, event: dict[str, Any]) -> int:
    total = 0
    for i in range(STEPS):
        total += await ctx.run_typed(f"s{i}", step, restate.RunOptions(), i)
    return total


def _watchdog(deadline: float, parent: int) -> None:
    while time.time() < deadline and os.getppid() == parent:
        time.sleep(0.5)
    print("bench: deadline passed or the benchmark is gone: exiting", flush=True)
    os._exit(3)


def main() -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{os.environ['BENCH_PORT']}"]
    config.h2_max_concurrent_streams = 2**31 - 1  # restate-server multiplexes invocations on one connection
    config.accesslog = None
    threading.Thread(target=_watchdog, args=(float(os.environ["BENCH_DEADLINE"]), os.getppid()),
                     daemon=True).start()
    asyncio.run(serve(restate.app(services=[svc]), config))  # the benchmark ends this process with SIGKILL


if __name__ == "__main__":
    main()
