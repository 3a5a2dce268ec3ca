"""Verification app of the chaos suite (tests/chaos): per-key counters with a step, durable sleeps and
calls across partitions, all emitting to one output topic. Topic and app names come from the
environment so every run gets its own. Every output names the invocation that emitted it, whose id
carries the partition it ran on (``inv-<partition>-...``), and the process that committed it: the
verifier uses them to say where a duplicate came from."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import processor as p

app = p.App(os.environ.get("CHAOS_APP", "chaos"),
            suspend_after=timedelta(seconds=float(os.environ.get("CHAOS_SUSPEND", "2"))))
OUTPUT = os.environ.get("CHAOS_OUTPUT", "chaos-out")
PID = os.getpid()  # which process committed an output: the runner maps it to the instance and its life


def _next(n: int) -> int:
    return n


counter = app.virtual_object("counter")


@counter.handler()
async def count(ctx: p.ObjectContext, event: dict[str, Any]) -> int:
    """get, one step, set, emit: the count of this key, 1..n with no gap or duplicate."""
    n = await ctx.run("next", _next, (await ctx.get("count") or 0) + 1)
    ctx.set("count", n)
    ctx.emit(OUTPUT, {"kind": "count", "key": ctx.key, "count": n, "id": event["id"], "src": event["src"],
                      "t": event["t"], "inv": ctx.invocation_id, "pid": PID}, key=ctx.key)
    return n


sleeper = app.virtual_object("sleeper")


@sleeper.handler()
async def nap(ctx: p.ObjectContext, event: dict[str, Any]) -> None:
    """A durable sleep of 1-4 s (drawn from the invocation's seeded random: the same on every replay),
    then exactly one output."""
    ms = int(ctx.random().uniform(1000, 4000))
    await ctx.sleep(timedelta(milliseconds=ms))
    ctx.emit(OUTPUT, {"kind": "sleep", "id": event["id"], "ms": ms, "inv": ctx.invocation_id,
                          "pid": PID}, key=event["id"])


answerer = app.virtual_object("answerer")


def _square(x: int) -> int:
    return x * x


@answerer.handler()
async def answer(ctx: p.ObjectContext, arg: dict[str, Any]) -> dict[str, int]:
    """The callee: a step and a per-key count of the calls it answered."""
    square = await ctx.run("square", _square, arg["x"])
    nth = (await ctx.get("answered") or 0) + 1
    ctx.set("answered", nth)
    return {"square": square, "nth": nth}


asker = app.virtual_object("asker")


@asker.handler()
async def ask(ctx: p.ObjectContext, event: dict[str, Any]) -> None:
    """Calls `answer` on a key of another partition (chosen by the workload) and emits the answer once."""
    got = await ctx.call(answer, {"x": event["x"], "id": event["id"]}, key=event["callee"])
    ctx.emit(OUTPUT, {"kind": "call", "id": event["id"], "callee": event["callee"], "x": event["x"],
                      "answer": got, "inv": ctx.invocation_id, "pid": PID}, key=event["id"])


app.subscribe(os.environ.get("CHAOS_COUNTS", "chaos-counts"), count)
app.subscribe(os.environ.get("CHAOS_SLEEPS", "chaos-sleeps"), nap)
app.subscribe(os.environ.get("CHAOS_ASKS", "chaos-asks"), ask)
