"""Test app for the admin endpoint: an object whose handler counts per key, runs one step, and on
request waits on an awakeable (something to find and cancel) or blocks the event loop itself for a
while (what /healthz must report)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import processor as p

app = p.App(os.environ["ADMIN_APP"], journal_retention=timedelta(days=1))  # finished journals stay readable
acct = app.virtual_object("acct")
OUTPUT = os.environ["ADMIN_OUTPUT"]


def note(ev_id: str) -> str:
    return f"noted {ev_id}"


@acct.handler()
async def handle(ctx: p.ObjectContext, ev: dict[str, Any]) -> int:
    if ev.get("block_loop_s"):
        time.sleep(ev["block_loop_s"])  # on the event loop, not in a step: nothing else runs meanwhile
    n = (await ctx.get("n") or 0) + 1
    ctx.set("n", n)
    await ctx.run("note", note, ev["id"])
    if ev.get("wait"):
        _awakeable_id, approval = ctx.awakeable()
        try:
            await approval
        except p.InvocationCancelled:
            ctx.set("cancelled", ev["id"])
            raise
    ctx.emit(OUTPUT, {"id": ev["id"], "n": n}, key=ctx.key)
    return n


app.subscribe(os.environ["ADMIN_INPUT"], handle)
