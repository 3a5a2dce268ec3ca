"""Test app: each record runs one slow step, then emits once. A test freezes an instance while its
step bodies run, so they finish after its partitions moved (what a zombie does on waking)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import processor as p

app = p.App(os.environ["SLOW_APP"])
work = app.service("work")
EFFECTS = Path(os.environ["SLOW_EFFECTS"])
OUTPUT = os.environ["SLOW_OUTPUT"]


def slow(ev_id: str, seconds: float) -> str:
    with EFFECTS.open("a") as f:
        f.write(f"start:{ev_id}\n")
    time.sleep(seconds)
    return f"done:{ev_id}"


@work.handler()
async def step_then_emit(ctx: p.Context, ev: dict[str, Any]) -> None:
    r = await ctx.run("slow", slow, ev["id"], ev["seconds"])
    ctx.emit(OUTPUT, {"id": ev["id"], "r": r}, key=ev["id"])


app.subscribe(os.environ["SLOW_INPUT"], step_then_emit)
