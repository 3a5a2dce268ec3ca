"""Test app: a rate-limited service handler and a shared handler limited per key (decision 014).
Each invocation emits what the tests measure: the rated one its start time, the limited one a start
and an end marker around a step that lasts a while."""

from __future__ import annotations

import os
import time

import processor as p

app = p.App(os.environ["LIMITS_APP"])
OUTPUT = os.environ["LIMITS_OUTPUT"]
RATE = float(os.environ.get("LIMITS_RATE", "20"))
PER_KEY = int(os.environ.get("LIMITS_PER_KEY", "2"))
STEP_S = float(os.environ.get("LIMITS_STEP_S", "0.5"))

jobs = app.service("jobs")
docs = app.virtual_object("docs")


@jobs.handler(rate=p.Rate(per_second=RATE))
async def ping(ctx: p.Context, ev: dict[str, int]) -> None:
    ctx.emit(OUTPUT, {"rated": ev["n"], "t": await ctx.time()})


def _work() -> bool:
    time.sleep(STEP_S)
    return True


@docs.handler(shared=True, concurrency_per_key=PER_KEY)
async def render(ctx: p.ObjectSharedContext, ev: dict[str, int]) -> None:
    ctx.emit(OUTPUT, {"key": ctx.key, "n": ev["n"], "mark": "start"}, key=ctx.key)
    await ctx.run("work", _work)
    ctx.emit(OUTPUT, {"key": ctx.key, "n": ev["n"], "mark": "end"}, key=ctx.key)


app.subscribe(os.environ["LIMITS_RATED"], ping)
app.subscribe(os.environ["LIMITS_DOCS"], render)
