"""Test app: a virtual object that emits each event it processes, so a test can check that good
records flow in order around the poison ones that go to the DLQ."""

from __future__ import annotations

import os

import processor as p

app = p.App(os.environ["POISON_APP"])
orders = app.virtual_object("orders")
OUTPUT = os.environ["POISON_OUTPUT"]


@orders.handler()
async def take(ctx: p.ObjectContext, event: dict[str, int]) -> None:
    ctx.emit(OUTPUT, {"key": ctx.key, "n": event["n"]}, key=ctx.key)


app.subscribe(os.environ["POISON_INPUT"], take)
