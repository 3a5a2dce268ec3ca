"""Test app: a counter whose finished invocations (rows and journals) are kept for two seconds only."""

from __future__ import annotations

import os
from datetime import timedelta

import processor as p

app = p.App(os.environ["RETENTION_APP"], retention=timedelta(seconds=2), journal_retention=timedelta(seconds=2))
counter = app.virtual_object("counter")
OUTPUT = os.environ["RETENTION_OUTPUT"]


def _next(n: int) -> int:
    return n + 1


@counter.handler()
async def count(ctx: p.ObjectContext, event: dict[str, object]) -> int:
    n = await ctx.run("next", _next, await ctx.get("count") or 0)
    ctx.set("count", n)
    ctx.emit(OUTPUT, {"key": ctx.key, "count": n}, key=ctx.key)
    return n


app.subscribe(os.environ["RETENTION_INPUT"], count)
