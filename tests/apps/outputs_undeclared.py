"""Test app: declares an output topic without a partition count (so a missing one refuses the start)."""

from __future__ import annotations

import os

import processor as p

app = p.App(os.environ["OUTPUTS_APP"])
relay = app.virtual_object("relay")
app.output(os.environ["OUTPUTS_DECLARED"])


@relay.handler()
async def forward(ctx: p.ObjectContext, event: dict[str, str]) -> None:
    ctx.emit(os.environ["OUTPUTS_DECLARED"], event, key=ctx.key)


app.subscribe(os.environ["OUTPUTS_INPUT"], forward)
