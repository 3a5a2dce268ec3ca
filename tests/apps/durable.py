"""Test app for durable waits: timers, call chains, awakeables, workflows and combinators. Topic and
app names come from the environment; step side effects are counted in a file."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p

app = p.App(os.environ["DURABLE_APP"], suspend_after=timedelta(seconds=float(os.environ.get("DURABLE_SUSPEND", "5"))))
EFFECTS = Path(os.environ["DURABLE_EFFECTS"])
OUTPUT = os.environ["DURABLE_OUTPUT"]


def effect(name: str) -> str:
    with EFFECTS.open("a") as f:
        f.write(name + "\n")
    return name


timer = app.service("timer")


@timer.handler()
async def nap(ctx: p.Context, ev: dict[str, Any]) -> str:
    await ctx.run("before", effect, f"before:{ev['id']}")
    await ctx.sleep(timedelta(seconds=ev["seconds"]))
    await ctx.run("after", effect, f"after:{ev['id']}")
    ctx.emit(OUTPUT, {"id": ev["id"], "slept": ev["seconds"]}, key=ev["id"])
    return "rested"


chain_c = app.service("c")


@chain_c.handler()
async def leaf(ctx: p.Context, arg: dict[str, Any]) -> dict[str, Any]:
    await ctx.run("c-step", effect, f"c:{arg['id']}")
    if arg.get("fail"):
        raise p.TerminalError(f"c refuses {arg['id']}")
    return {"c": arg["id"]}


chain_b = app.virtual_object("b")


@chain_b.handler()
async def middle(ctx: p.ObjectContext, arg: dict[str, Any]) -> dict[str, Any]:
    await ctx.run("b-step", effect, f"b:{arg['id']}")
    out = await ctx.call(leaf, arg)
    ctx.set("calls", (await ctx.get("calls") or 0) + 1)
    return {"b": ctx.key, **out}


chain_a = app.service("a")


@chain_a.handler()
async def top(ctx: p.Context, arg: dict[str, Any]) -> None:
    await ctx.run("a-step", effect, f"a:{arg['id']}")
    try:
        out = await ctx.call(middle, arg, key=f"b-{arg['id']}")
    except p.TerminalError as e:
        out = {"error": str(e)}
    ctx.emit(OUTPUT, {"id": arg["id"], "chain": out}, key=arg["id"])


approvals = app.service("approval")


@approvals.handler()
async def ask(ctx: p.Context, ev: dict[str, Any]) -> Any:
    awk, decision = ctx.awakeable()
    ctx.emit(OUTPUT, {"id": ev["id"], "awakeable": awk}, key=ev["id"])
    try:
        verdict = await decision
    except p.TerminalError as e:
        ctx.emit(OUTPUT, {"id": ev["id"], "rejected": e.message}, key=ev["id"])
        return None
    await ctx.run("approved", effect, f"approved:{ev['id']}")
    ctx.emit(OUTPUT, {"id": ev["id"], "approved": verdict}, key=ev["id"])
    return verdict


signup = app.workflow("signup")


@signup.run()
async def run_signup(ctx: p.WorkflowContext, user: dict[str, Any]) -> dict[str, Any]:
    await ctx.run("welcome", effect, f"welcome:{ctx.key}")
    ctx.set("stage", "waiting")
    code = await ctx.promise("confirmed")
    ctx.set("stage", "done")
    return {"user": ctx.key, "confirmed_with": code}


@signup.handler()
async def confirm(ctx: p.WorkflowSharedContext, code: str) -> str:
    ctx.promise("confirmed").resolve(code)
    return str(await ctx.get("stage"))


races = app.service("race")


@races.handler()
async def race(ctx: p.Context, ev: dict[str, Any]) -> dict[str, Any]:
    both = await p.gather(ctx.run("x", effect, f"x:{ev['id']}"), ctx.run("y", effect, f"y:{ev['id']}"))
    _awk, never = ctx.awakeable()
    winner, _ = await p.select(late=never, timer=ctx.sleep(timedelta(milliseconds=ev["ms"])))
    try:
        await ctx.awakeable()[1].with_timeout(timedelta(milliseconds=ev["ms"]))
        timed_out = False
    except TimeoutError:
        timed_out = True
    result = {"id": ev["id"], "both": both, "winner": winner, "timed_out": timed_out}
    ctx.emit(OUTPUT, result, key=ev["id"])
    return result


app.subscribe(os.environ["DURABLE_NAPS"], nap)
app.subscribe(os.environ["DURABLE_CHAINS"], top)
app.subscribe(os.environ["DURABLE_ASKS"], ask)
app.subscribe(os.environ["DURABLE_RACES"], race)
