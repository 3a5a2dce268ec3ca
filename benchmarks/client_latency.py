"""A Client call's latency, one call at a time: ``python -m benchmarks.client_latency BOOTSTRAP APP
[CALLS [CONCURRENT]]`` against a running processor of tests/apps/typed.py (``shop/echo`` returns its input). Each
call is timed from before ``Client.call`` to its result, on one Client; the first call (which finds
the inbox and, since issue 10, starts the results reader) is reported apart. Then CONCURRENT calls
(default 50) are started at once on one Client and the time until the last result is reported.
Bounded: CALLS <= 1000, CONCURRENT <= 500."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import timedelta

import processor as p


async def measure(bootstrap: str, app: str, calls: int) -> list[float]:
    took: list[float] = []
    async with p.Client(bootstrap, app) as client:
        for i in range(calls):
            start = time.perf_counter()
            got = await client.call("shop/echo", {"n": i}, timeout=timedelta(seconds=60))
            took.append(time.perf_counter() - start)
            assert got == {"n": i}, got
    return took


async def burst(bootstrap: str, app: str, calls: int) -> float:
    async with p.Client(bootstrap, app) as client:
        await client.call("shop/echo", {"n": -1}, timeout=timedelta(seconds=60))  # connected, reader started
        start = time.perf_counter()
        got = await asyncio.gather(*(client.call("shop/echo", {"n": i}, timeout=timedelta(seconds=120))
                                     for i in range(calls)))
        took = time.perf_counter() - start
        assert got == [{"n": i} for i in range(calls)], got
    return took


def main() -> None:
    bootstrap, app = sys.argv[1], sys.argv[2]
    calls = min(int(sys.argv[3]) if len(sys.argv) > 3 else 50, 1000)
    concurrent = min(int(sys.argv[4]) if len(sys.argv) > 4 else 50, 500)
    took = asyncio.run(measure(bootstrap, app, calls))
    rest = sorted(took[1:])
    print(f"first call {took[0] * 1000:.0f} ms; next {len(rest)}: median {statistics.median(rest) * 1000:.1f} ms, "
          f"p90 {rest[int(len(rest) * 0.9)] * 1000:.1f} ms, max {rest[-1] * 1000:.1f} ms")
    last = asyncio.run(burst(bootstrap, app, concurrent))
    print(f"{concurrent} concurrent calls: {last:.2f} s until the last result")


if __name__ == "__main__":
    main()
