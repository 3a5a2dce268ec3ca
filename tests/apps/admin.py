"""Test app for the admin endpoint and its web UI: an object whose handler counts per key, runs one
step, and on request waits on an awakeable (something to find and cancel), blocks the event loop
itself for a while (what /healthz must report), or runs a step that fails twice before it succeeds
and then raises, so the invocation backs off: failed twice, its next attempt ten minutes away."""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import processor as p

app = p.App(os.environ["ADMIN_APP"], journal_retention=timedelta(days=1),  # finished journals stay readable
            invocation_retry=p.RetryPolicy(initial_interval=timedelta(seconds=1), multiplier=600,
                                           max_interval=timedelta(minutes=10)))
acct = app.virtual_object("acct")
OUTPUT = os.environ["ADMIN_OUTPUT"]
_tries: Counter[str] = Counter()


def note(ev_id: str) -> str:
    return f"noted {ev_id}"


def flaky(ev_id: str) -> str:
    _tries[ev_id] += 1
    if _tries[ev_id] < 3:
        raise ConnectionError(f"flaky {ev_id}: try {_tries[ev_id]}")
    return f"reserved {ev_id}"


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
    if ev.get("fail"):
        await ctx.run("reserve", flaky, ev["id"])
        raise RuntimeError("payment service down")
    ctx.emit(OUTPUT, {"id": ev["id"], "n": n}, key=ctx.key)
    return n


app.subscribe(os.environ["ADMIN_INPUT"], handle)
