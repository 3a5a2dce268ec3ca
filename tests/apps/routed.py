"""Test app for records from producers that do not partition by murmur2: a per-key tally whose
outputs say which producer sent each event, and a shared handler that reads the tally. Step bodies
take ROUTED_STEP_S seconds, so a test can SIGKILL the processor while records are in flight."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p

KEEP_JOURNALS = timedelta(days=1)  # the tests read finished invocations' rows and journals
app = p.App(os.environ["ROUTED_APP"], journal_retention=KEEP_JOURNALS)
OUTPUT = os.environ["ROUTED_OUTPUT"]
EFFECTS = Path(os.environ["ROUTED_EFFECTS"])
STEP_S = float(os.environ.get("ROUTED_STEP_S", "0"))
tally = app.virtual_object("tally")


def note(line: str) -> str:
    time.sleep(STEP_S)
    with EFFECTS.open("a") as f:
        f.write(line + "\n")
    return line


@tally.handler()
async def add(ctx: p.ObjectContext, ev: dict[str, Any]) -> int:
    n = (await ctx.get("count") or 0) + 1
    await ctx.run("note", note, f"{ctx.key} {ev['src']} {ev['i']}")
    ctx.set("count", n)
    ctx.emit(OUTPUT, {"key": ctx.key, "count": n, "src": ev["src"], "i": ev["i"]}, key=ctx.key)
    return n


@tally.handler(shared=True)
async def read(ctx: p.ObjectSharedContext, _arg: Any) -> Any:
    return await ctx.get("count")


app.subscribe(os.environ["ROUTED_INPUT"], add)
