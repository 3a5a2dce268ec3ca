"""Test app: a virtual object with an exclusive handler that blocks on a gate and a shared handler
that reads the same key's state meanwhile."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import processor as p

KEEP_JOURNALS = timedelta(days=1)  # the tests read finished invocations' rows and journals
app = p.App(os.environ["SHARED_APP"], journal_retention=KEEP_JOURNALS)
account = app.virtual_object("account")
GATE = Path(os.environ["SHARED_GATE"])
OUTPUT = os.environ["SHARED_OUTPUT"]


def wait_for_gate() -> bool:
    deadline = time.monotonic() + 120
    while not GATE.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("gate never opened")
        time.sleep(0.05)
    return True


@account.handler()
async def deposit(ctx: p.ObjectContext, ev: dict[str, int]) -> None:
    balance = (await ctx.get("balance") or 0) + ev["amount"]
    ctx.set("balance", balance)
    await ctx.run("hold", wait_for_gate)
    ctx.emit(OUTPUT, {"deposited": ev["amount"], "balance": balance}, key=ctx.key)


@account.handler(shared=True)
async def peek(ctx: p.ObjectSharedContext, ev: dict[str, int]) -> None:
    ctx.emit(OUTPUT, {"peek": ev["n"], "balance": await ctx.get("balance"), "keys": await ctx.state_keys()},
             key=ctx.key)


app.subscribe(os.environ["SHARED_DEPOSITS"], deposit)
app.subscribe(os.environ["SHARED_PEEKS"], peek)
