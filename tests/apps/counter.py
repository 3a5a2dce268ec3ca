"""Test app: a per-key counter. Topic names come from the environment so each test gets its own."""

from __future__ import annotations

import os
from pathlib import Path

import processor as p

app = p.App(os.environ.get("COUNTER_APP", "counter"))
counter = app.virtual_object("counter")
SIDE_EFFECTS = Path(os.environ.get("COUNTER_EFFECTS", "/dev/null"))
OUTPUT = os.environ.get("COUNTER_OUTPUT", "counts")


def _touch(key: str, n: int) -> int:
    with SIDE_EFFECTS.open("a") as f:
        f.write(f"{key} {n}\n")
    return n


@counter.handler()
async def count(ctx: p.ObjectContext, event: dict[str, object]) -> int:
    n = (await ctx.get("count") or 0) + 1
    await ctx.run("effect", _touch, ctx.key, n)
    ctx.set("count", n)
    ctx.emit(OUTPUT, {"key": ctx.key, "count": n}, key=ctx.key)
    return n


app.subscribe(os.environ.get("COUNTER_INPUT", "events"), count)
