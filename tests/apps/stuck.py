"""Test app for the cluster-wide CLI: an object whose handler counts per key and, on request, runs a
step that always raises a retryable error: an invocation stuck in a retry loop, to find and kill."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import processor as p

app = p.App(os.environ["STUCK_APP"], journal_retention=timedelta(days=1))  # a killed one's row stays readable
acct = app.virtual_object("acct")
OUTPUT = os.environ["STUCK_OUTPUT"]
FOREVER = p.RetryPolicy(initial_interval=timedelta(milliseconds=200), max_interval=timedelta(seconds=1))


def charge(ev_id: str) -> str:
    raise ConnectionError(f"payment service unreachable for {ev_id}")


@acct.handler()
async def handle(ctx: p.ObjectContext, ev: dict[str, Any]) -> int:
    n = (await ctx.get("n") or 0) + 1
    ctx.set("n", n)
    ctx.set("last", ev["id"])
    if ev.get("stuck"):
        await ctx.run("charge", charge, ev["id"], retry=FOREVER)
    ctx.emit(OUTPUT, {"id": ev["id"], "n": n}, key=ctx.key)
    return n


app.subscribe(os.environ["STUCK_INPUT"], handle)
