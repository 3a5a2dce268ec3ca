"""Test app for durable waits: timers, call chains, awakeables, workflows and combinators,
cancellation and idempotency. Topic and app names come from the environment; step side effects are
counted in a file, one line per step body run. Bodies marked gated block until the file named by
DURABLE_GATE exists, so a test can SIGKILL the processor while one runs."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p

KEEP_JOURNALS = timedelta(days=1)  # the tests read finished invocations' rows and journals
app = p.App(os.environ["DURABLE_APP"], journal_retention=KEEP_JOURNALS,
            suspend_after=timedelta(seconds=float(os.environ.get("DURABLE_SUSPEND", "5"))))
EFFECTS = Path(os.environ["DURABLE_EFFECTS"])
OUTPUT = os.environ["DURABLE_OUTPUT"]


def effect(name: str) -> str:
    with EFFECTS.open("a") as f:
        f.write(name + "\n")
    return name


def gated(name: str) -> str:
    gate = Path(os.environ["DURABLE_GATE"])
    deadline = time.monotonic() + 120
    while not gate.exists():  # the test opens the gate only in the processor's next life
        if time.monotonic() > deadline:
            raise TimeoutError("gate never opened")
        time.sleep(0.05)
    return effect(name)


def paced(name: str, ev_id: str, delays: dict[str, dict[str, float]]) -> str:
    """Sleeps as long as the event says for this step in this life (DURABLE_LIFE) of the processor,
    so a test can make steps finish in a different order in each life."""
    life = os.environ.get("DURABLE_LIFE", "1")
    time.sleep(delays.get(life, {}).get(name, 0.0))
    effect(f"{name}:{ev_id}")
    return f"{name}:{life}"


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
    await ctx.run("c-step", gated if arg.get("gated") else effect, f"c:{arg['id']}")
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
    return {"user": ctx.key, "plan": user.get("plan"), "confirmed_with": code}


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


@races.handler()
async def ordered(ctx: p.Context, ev: dict[str, Any]) -> dict[str, Any]:
    d = ev["delays"]
    both = await p.gather(ctx.run("x", paced, "x", ev["id"], d), ctx.run("y", paced, "y", ev["id"], d))
    winner, value = await p.select(x=ctx.run("sx", paced, "sx", ev["id"], d),
                                   y=ctx.run("sy", paced, "sy", ev["id"], d))
    await ctx.run("hold", gated, f"hold:{ev['id']}")
    result = {"id": ev["id"], "both": both, "winner": winner, "value": value}
    ctx.emit(OUTPUT, result, key=ev["id"])
    return result


holder = app.service("holder")


@holder.handler()
async def hold_until_decided(ctx: p.Context, ev: dict[str, Any]) -> Any:
    awk, decision = ctx.awakeable()
    ctx.emit(OUTPUT, {"id": ev["id"], "holding": awk}, key=ev["id"])
    return await decision


booking = app.service("booking")


@booking.handler()
async def book(ctx: p.Context, ev: dict[str, Any]) -> Any:
    await ctx.run("reserve", effect, f"reserve:{ev['id']}")
    try:
        return await ctx.call(hold_until_decided, ev)
    except p.InvocationCancelled:
        await ctx.run("compensate", effect, f"compensate:{ev['id']}")
        raise


control = app.service("control")  # acts on other invocations (tests/e2e/test_handler_control.py)


@control.handler()
async def resolve_other(ctx: p.Context, ev: dict[str, Any]) -> str:
    ctx.resolve_awakeable(ev["awakeable"], ev["value"])
    await ctx.run("resolved", effect, f"resolved:{ev['id']}")
    return "resolved"


@control.handler()
async def cancel_other(ctx: p.Context, ev: dict[str, Any]) -> str:
    ctx.cancel(ev["target"])
    await ctx.run("cancelled", effect, f"cancelled:{ev['id']}")
    return "cancelled"


@control.handler()
async def send_then_attach(ctx: p.Context, ev: dict[str, Any]) -> Any:
    callee = ctx.send(hold_until_decided, {"id": ev["id"]})
    ctx.emit(OUTPUT, {"id": ev["id"], "sent": callee}, key=ev["id"])
    result = await ctx.attach(callee)
    await ctx.run("attached", effect, f"attached:{ev['id']}")
    ctx.emit(OUTPUT, {"id": ev["id"], "attached": result}, key=ev["id"])
    return result


line = app.virtual_object("line")


@line.handler()
async def join(ctx: p.ObjectContext, ev: dict[str, Any]) -> str:
    awk, turn = ctx.awakeable()
    ctx.emit(OUTPUT, {"id": ev["id"], "turn": awk}, key=ev["id"])
    await turn
    await ctx.run("served", effect, f"served:{ev['id']}")
    return str(ev["id"])


once = app.service("once")


@once.handler()
async def greet(ctx: p.Context, name: str) -> dict[str, str]:
    await ctx.run("greet", effect, f"greet:{name}")
    return {"hello": name, "token": str(ctx.uuid())}


app.subscribe(os.environ["DURABLE_NAPS"], nap)
app.subscribe(os.environ["DURABLE_CHAINS"], top)
app.subscribe(os.environ["DURABLE_ASKS"], ask)
app.subscribe(os.environ["DURABLE_RACES"], race)
if os.environ.get("DURABLE_SIGNUPS"):
    app.subscribe(os.environ["DURABLE_SIGNUPS"], run_signup)
