"""Test app for poison events: two virtual objects whose handler reads a field that a poison event
lacks (a KeyError on every attempt) until the "fix" is deployed (the file `EXHAUSTED_FIX` exists);
their retries run out after 3 attempts, then one pauses (`pause`) and the other dead-letters
(`dead`). Each attempt appends a line to `<EXHAUSTED_DIR>/<object>-<key>-<n>.attempts`; each event
processed emits its key, n and the key's count of events seen, which the poison event's failed
attempts bumped too (a journaled state write is committed with the attempt)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p

app = p.App(os.environ["EXHAUSTED_APP"], journal_retention=timedelta(days=1))  # rows stay readable
OUTPUT = os.environ["EXHAUSTED_OUTPUT"]
DIR = Path(os.environ["EXHAUSTED_DIR"])
FIX = Path(os.environ["EXHAUSTED_FIX"])
THRICE = p.RetryPolicy(initial_interval=timedelta(milliseconds=100), max_attempts=3)


async def _take(ctx: p.ObjectContext, event: dict[str, Any], obj: str) -> None:
    with (DIR / f"{obj}-{ctx.key}-{event['n']}.attempts").open("a") as f:
        f.write("attempt\n")
    seen = (await ctx.get("seen") or 0) + 1
    ctx.set("seen", seen)
    amount = event.get("amount", 0) if FIX.exists() else event["amount"]  # the bug, and its fix
    ctx.emit(OUTPUT, {"obj": obj, "key": ctx.key, "n": event["n"], "amount": amount, "seen": seen}, key=ctx.key)


pause = app.virtual_object("pause")
dead = app.virtual_object("dead")


@pause.handler(retry=THRICE, on_exhausted=p.OnExhausted.PAUSE)
async def take_or_pause(ctx: p.ObjectContext, event: dict[str, Any]) -> None:
    await _take(ctx, event, "pause")


@dead.handler(retry=THRICE, on_exhausted=p.OnExhausted.DEAD_LETTER)
async def take_or_dead_letter(ctx: p.ObjectContext, event: dict[str, Any]) -> None:
    await _take(ctx, event, "dead")


app.subscribe(os.environ["EXHAUSTED_PAUSE_INPUT"], take_or_pause)
app.subscribe(os.environ["EXHAUSTED_DEAD_INPUT"], take_or_dead_letter)
