"""The built-in virtual object that runs schedules: ``processor.schedule``, one key per schedule name.

Its state is the definition (with a *chain* id chosen when the definition was set), the next tick
it is armed for and the last tick it fired. Each run of ``tick`` is an ordinary exclusive
invocation: it reads the definition, takes a journaled clock reading, sends one invocation of the
target per tick due (a journaled ``ctx.send``) and sends itself the next ``tick`` with a delay (a
durable ``send`` timer). ``ensure`` sets or replaces the definition and arms a new chain; ``remove``
clears it. A ``tick`` of a chain that is no longer the key's (replaced or removed) does nothing, so
a key never has two live chains. Why each tick is one invocation exactly: decision 010.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from processor._context import ObjectContext
from processor._errors import ConfigurationError, TerminalError
from processor._schedule import SERVICE, CatchUp, ScheduleDef, plan
from processor._serde import JsonSerde

if TYPE_CHECKING:
    from processor._app import App

log = logging.getLogger("processor.schedule")


def install(app: App) -> None:
    """Register the built-in schedule object on `app` (every app has it, so a Client can schedule on
    any app)."""
    obj = app.virtual_object(SERVICE)
    json = JsonSerde()  # its commands are JSON whatever the app's default serde is

    def target_error(d: ScheduleDef) -> str | None:
        h = app.handler(d.target)
        if h is None:
            return f"no handler {d.target!r} in app {app.name!r}"
        if h.keyed and d.key is None:
            return f"{d.target} is keyed: schedule it with key=..."
        return None

    def fire_due(ctx: ObjectContext, d: ScheduleDef, at: int, now: int) -> int:
        """Send the target once per tick of `d` due from tick `at` to `now` (the plan); returns the
        tick after them."""
        p = plan(d, at, now)
        for t in p.fire:
            ctx.send(d.target, {"schedule": d.name, "at": d.local_time(t), "at_ms": t, "payload": d.payload},
                     key=d.key)
        if p.skipped:
            log.warning("schedule %r: skipped %d missed tick(s) from %s (catch_up=%s)", d.name, p.skipped,
                        d.local_time(at), d.catch_up.value)
        if p.fire:
            ctx.set("last", p.fire[-1])
        return p.next_ms

    @obj.handler(name="ensure", serde=json)
    async def ensure(ctx: ObjectContext, spec: dict[str, Any]) -> str:
        """Set the definition (a new chain) unless this very definition already runs; returns the
        next tick as ISO 8601 in the schedule's time zone."""
        try:
            d = ScheduleDef.build(spec["name"], spec["target"], spec.get("payload"), cron=spec.get("cron"),
                                  every=None if spec.get("every_ms") is None else
                                  timedelta(milliseconds=spec["every_ms"]),
                                  tz=spec.get("tz", "UTC"), key=spec.get("key"),
                                  catch_up=CatchUp(spec.get("catch_up", "latest")),
                                  grace=timedelta(milliseconds=spec.get("grace_ms", 60_000)))
        except (KeyError, TypeError, ValueError, ConfigurationError) as e:
            raise TerminalError(f"bad schedule definition: {e}") from None
        if d.name != ctx.key:
            raise TerminalError(f"schedule {d.name!r} sent to key {ctx.key!r}")
        if (why := target_error(d)) is not None:
            raise TerminalError(why)
        digest = d.digest()
        cur = await ctx.get("spec")
        stopped = await ctx.get("stopped")
        armed = await ctx.get("next")
        if cur is not None and cur.get("digest") == digest and stopped is None and armed is not None:
            return d.local_time(armed)
        now = round(await ctx.time() * 1000)
        if cur is not None and stopped is None and armed is not None and armed <= now:
            # the running definition owes ticks up to now (due, their run not there yet): they are
            # its, and replacing it from the next tick on must not lose them
            fire_due(ctx, ScheduleDef.from_json(cur), armed, now)
        chain = ctx.uuid().hex
        first = d.next_after(now)
        ctx.set("spec", {**d.to_json(), "digest": digest, "chain": chain})
        ctx.set("next", first)
        ctx.clear("stopped")
        ctx.send(tick, {"chain": chain, "at": first}, key=ctx.key, delay=timedelta(milliseconds=first - now))
        return d.local_time(first)

    @obj.handler(name="remove", serde=json)
    async def remove(ctx: ObjectContext, _arg: Any) -> bool:
        """Forget the schedule: its pending tick finds no definition and does nothing. Returns
        whether there was one."""
        existed = await ctx.get("spec") is not None
        ctx.clear_all()
        return existed

    @obj.handler(name="tick", serde=json)
    async def tick(ctx: ObjectContext, arg: dict[str, Any]) -> None:
        cur = await ctx.get("spec")
        if cur is None or cur["chain"] != arg["chain"]:
            return  # removed or replaced since this tick was armed
        last = await ctx.get("last")
        if last is not None and arg["at"] <= last:
            return  # never happens (one pending tick per chain); a tick must not fire twice if it did
        d = ScheduleDef.from_json(cur)
        if (why := target_error(d)) is not None:  # the handler went away in a deploy: ensure re-arms
            ctx.set("stopped", why)
            log.error("schedule %r stopped: %s", d.name, why)
            return
        now = round(await ctx.time() * 1000)
        nxt = fire_due(ctx, d, arg["at"], now)
        ctx.set("next", nxt)
        ctx.send(tick, {"chain": arg["chain"], "at": nxt}, key=ctx.key,
                 delay=timedelta(milliseconds=max(0, nxt - now)))
