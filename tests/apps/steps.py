"""Test app: a three-step handler whose step bodies count their runs in a file, with a gate between
step 1 and step 2 so a test can kill the processor right after step 1 committed."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import processor as p

KEEP_JOURNALS = timedelta(days=1)  # the tests read finished invocations' rows and journals
app = p.App(os.environ["STEPS_APP"], journal_retention=KEEP_JOURNALS)
svc = app.service("steps")
EFFECTS = Path(os.environ["STEPS_EFFECTS"])
GATE = Path(os.environ["STEPS_GATE"])
OUTPUT = os.environ["STEPS_OUTPUT"]


def effect(name: str) -> str:
    with EFFECTS.open("a") as f:
        f.write(name + "\n")
    return name


def gated(name: str) -> str:
    deadline = time.monotonic() + 120
    while not GATE.exists():  # the test opens the gate only in the processor's next life
        if time.monotonic() > deadline:
            raise TimeoutError("gate never opened")
        time.sleep(0.05)
    return effect(name)


@svc.handler()
async def three_steps(ctx: p.Context, order: dict[str, str]) -> str:
    first = await ctx.run("one", effect, "one:" + order["id"])
    ctx.emit(OUTPUT, {"id": order["id"], "after": first}, key=order["id"])
    second = await ctx.run("two", gated, "two:" + order["id"])
    third = await ctx.run("three", effect, "three:" + order["id"])
    ctx.emit(OUTPUT, {"id": order["id"], "done": [first, second, third]}, key=order["id"])
    return third


app.subscribe(os.environ["STEPS_INPUT"], three_steps)
