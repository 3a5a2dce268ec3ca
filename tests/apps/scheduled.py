"""Test app for schedules: each tick of each schedule emits one record naming the schedule and its
tick time. The schedules come from the environment: SCHED_NAMES (comma-separated) tick every
SCHED_EVERY seconds with catch-up policy SCHED_CATCH_UP and grace SCHED_GRACE seconds;
SCHED_CRON_NAMES tick on cron expression SCHED_CRON (default: every minute) in time zone SCHED_TZ."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import processor as p

app = p.App(os.environ["SCHED_APP"], partitions=int(os.environ.get("SCHED_PARTITIONS", "4")))
OUTPUT = os.environ["SCHED_OUTPUT"]

ticks = app.service("ticks")


@ticks.handler()
async def record(ctx: p.Context, tick: dict[str, Any]) -> None:
    ctx.emit(OUTPUT, {"schedule": tick["schedule"], "at_ms": tick["at_ms"], "at": tick["at"],
                      "payload": tick["payload"], "id": ctx.invocation_id}, key=tick["schedule"])


ctl = app.service("ctl")


@ctl.handler()
async def manage(ctx: p.Context, req: dict[str, Any]) -> str:
    """Schedules made and removed from inside a handler."""
    if req["op"] == "add":
        return ctx.schedule(req["name"], record, {"from": "handler"}, every=timedelta(seconds=1))
    return ctx.unschedule(req["name"])


for name in filter(None, os.environ.get("SCHED_NAMES", "").split(",")):
    app.schedule(name, record, {"name": name}, every=timedelta(seconds=float(os.environ.get("SCHED_EVERY", "1"))),
                 catch_up=p.CatchUp(os.environ.get("SCHED_CATCH_UP", "latest")),
                 grace=timedelta(seconds=float(os.environ.get("SCHED_GRACE", "60"))))

for name in filter(None, os.environ.get("SCHED_CRON_NAMES", "").split(",")):
    app.schedule(name, record, {"name": name}, cron=os.environ.get("SCHED_CRON", "* * * * *"),
                 tz=os.environ.get("SCHED_TZ", "Europe/Berlin"))
