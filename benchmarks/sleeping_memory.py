"""Suspension benchmark: what 100,000 sleeping invocations cost the process.

Each event starts a service invocation that sleeps for an hour (a durable timer). With a 1 s
suspension window the engine evicts every one from memory; what stays is LMDB rows (invocation,
journal entry, timer). The engine runs in this benchmark's own process so it can read the engine's
count of in-memory invocations and the process's resident memory (VmRSS) before and after: before
is the engine ready and idle, the events are produced after it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys
import time
from datetime import timedelta
from typing import Any

import processor as p
from benchmarks.harness import BenchContext, Row, benchmark
from processor._engine.engine import Engine
from processor.state import keys

AIM_MB = 200.0


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _pymalloc_arenas() -> int:
    """pymalloc's arenas (1 MiB each in CPython 3.11) in use: heap that a few live objects can pin
    after a peak, since an arena is returned only when every object in it is freed."""
    r, w = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(w, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        if "arenas allocated current" in line:
            return int(line.split("=")[1].replace(",", ""))
    return -1


def _rss_mb() -> float:
    return _status_mb("VmRSS")


@benchmark("sleeping_memory", timeout_s=900)
def sleeping_memory(ctx: BenchContext) -> list[Row]:
    n = ctx.pick(100_000, 10_000)
    topic = ctx.create_topic("sleepers", 4)
    app = p.App(ctx.unique("sleep").replace("bench-", "b"), suspend_after=timedelta(seconds=1))
    ctx.topics.extend([app.inbox_topic, app.changelog_topic, app.steps_topic, app.dlq_topic, app.results_topic])
    svc = app.service("sleeper")

    @svc.handler()
    async def nap(c: p.Context, ev: dict[str, Any]) -> None:
        await c.sleep(timedelta(hours=1))

    app.subscribe(topic, nap)
    return asyncio.run(_measure(ctx, app, n, topic))


async def _measure(ctx: BenchContext, app: p.App, n: int, topic: str) -> list[Row]:
    engine = Engine(app, bootstrap_servers=ctx.bootstrap, state_dir=ctx.scratch / "state", instance_id="mem")
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.wait_for(engine.ready.wait(), 120)
        gc.collect()
        # The baseline is an idle engine: the events are produced only now (produced before the
        # start, the engine was already working through them when it became ready, and the baseline
        # moved between runs from 46 to 126 MB).
        rss0, anon0 = _rss_mb(), _status_mb("RssAnon")
        arenas0 = _pymalloc_arenas()
        ctx.log(f"produce {n} events with distinct keys")
        await asyncio.to_thread(ctx.produce_events, topic, n, keys=n, value_bytes=60)
        t0 = time.monotonic()
        peak_in_memory = 0

        def stored() -> int:
            return sum(w.state.store.count(keys.INVOCATION) for w in engine.workers.values())

        while True:
            ctx.check()
            await asyncio.sleep(1.0)
            peak_in_memory = max(peak_in_memory, engine.in_memory_invocations())
            if task.done():
                task.result()
            if engine.in_memory_invocations() == 0 and stored() >= n:
                break
        secs = time.monotonic() - t0
        gc.collect()
        await asyncio.sleep(1.0)
        rss1, anon1 = _rss_mb(), _status_mb("RssAnon")
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        timers_held = sum(w.timers.in_memory() for w in engine.workers.values())
        store_mb = sum(f.stat().st_size for f in (ctx.scratch / "state").rglob("data.mdb")) / 2**20
        arenas = _pymalloc_arenas()
        ctx.log(f"{n} suspended in {secs:.1f} s; RSS {rss0:.0f} -> {rss1:.0f} MB (peak {maxrss:.0f} MB); "
                f"peak in memory {peak_in_memory}; timers in memory {timers_held}; stores {store_mb:.0f} MB; "
                f"pymalloc arenas {arenas0} -> {arenas}")
    finally:
        engine.request_stop()
        await asyncio.wait_for(task, 120)
    grow = rss1 - rss0
    return [
        ctx.row("anon_growth_mb", anon1 - anon0, "MB",
                notes=f"heap growth (RssAnon {anon0:.0f} -> {anon1:.0f} MB): the process's own memory, without "
                      f"LMDB's file-backed pages; {(anon1 - anon0) * 2**20 / n:,.0f} B per sleeping invocation; "
                      f"pymalloc arenas {arenas0} -> {arenas} MiB"),
        ctx.row("rss_growth_mb", grow, "MB",
                notes=f"{n:,} invocations sleeping 1 h, all evicted (engine count 0); RSS {rss0:.0f} -> {rss1:.0f} MB; "
                      f"the stores' data files {store_mb:.0f} MB ({store_mb * 2**20 / n:,.0f} B per sleeper); "
                      f"issue aim <= ~{AIM_MB:.0f} MB; {grow * 2**20 / n:,.0f} B per sleeping invocation"),
        ctx.row("rss_peak_mb", maxrss, "MB", notes=f"process peak RSS while creating them (ru_maxrss); "
                                                    f"peak in-memory invocations {peak_in_memory:,}"),
        ctx.row("suspended_per_s", n / secs, "invocations/s",
                notes=f"created, journaled and evicted with a 1 s suspension window; {timers_held:,} timers "
                      "held in memory (only the near window is)"),
    ]
