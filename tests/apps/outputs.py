"""Test app: emits each event to the topic the event names, and declares one output topic that each
instance creates at start (OUTPUTS_DECLARED, with OUTPUTS_DECLARED_PARTITIONS partitions)."""

from __future__ import annotations

import os

import processor as p

app = p.App(os.environ["OUTPUTS_APP"])
relay = app.virtual_object("relay")
app.output(os.environ["OUTPUTS_DECLARED"], partitions=int(os.environ["OUTPUTS_DECLARED_PARTITIONS"]))


@relay.handler()
async def forward(ctx: p.ObjectContext, event: dict[str, str]) -> None:
    ctx.emit(event["to"], {"key": ctx.key, "n": event["n"]}, key=ctx.key)


app.subscribe(os.environ["OUTPUTS_INPUT"], forward)
