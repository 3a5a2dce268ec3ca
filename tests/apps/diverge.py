"""Test app: a virtual object whose first step's name comes from DIVERGE_FIRST_STEP, so a restart
with a different name replays a journal that no longer matches the code. A "gated" event blocks in
a step that never finishes (the test SIGKILLs the processor there) unless DIVERGE_UNBLOCK is set;
other events just emit."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import processor as p

KEEP_JOURNALS = timedelta(days=1)  # the tests read finished invocations' rows and journals
app = p.App(os.environ["DIVERGE_APP"], journal_retention=KEEP_JOURNALS)
obj = app.virtual_object("account")
OUTPUT = os.environ["DIVERGE_OUTPUT"]
FIRST_STEP = os.environ.get("DIVERGE_FIRST_STEP", "a")
UNBLOCK = bool(os.environ.get("DIVERGE_UNBLOCK"))


def _named(name: str) -> str:
    return name


def _block() -> None:
    if not UNBLOCK:
        threading.Event().wait()  # until the process is killed


@obj.handler()
async def handle(ctx: p.ObjectContext, event: dict[str, object]) -> None:
    if event.get("gated"):
        first = await ctx.run(FIRST_STEP, _named, FIRST_STEP)
        ctx.emit(OUTPUT, {"key": ctx.key, "n": event["n"], "after": first}, key=ctx.key)
        await ctx.run("blocked", _block)
    ctx.emit(OUTPUT, {"key": ctx.key, "n": event["n"], "done": True}, key=ctx.key)


app.subscribe(os.environ["DIVERGE_INPUT"], handle)
