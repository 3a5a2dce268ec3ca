"""An order saga: reserve, charge, wait for a human approval (with a timeout), then ship — or undo
what was done, in reverse order, when the approval is rejected, times out or the workflow is cancelled.

Run it with ``python -m processor run examples.saga.app:app --bootstrap-servers HOST:PORT
--state-dir DIR``; start orders with ``p.Client(...).submit_workflow("order", order_id, {...})``
(see README.md and demo.py next to this file). The app id ``saga`` names the consumer group and the
internal topics (``saga.inbox``, ``saga.results``, ``saga.changelog``, ``saga.dlq``); approval
requests go to the topic ``approvals``, which must exist. ``SAGA_PREFIX`` (default empty) is put in
front of the app id and the topic, to run isolated copies side by side.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p

PREFIX = os.environ.get("SAGA_PREFIX", "")
APPROVALS_TOPIC = f"{PREFIX}approvals"
DEFAULT_APPROVAL_TIMEOUT = timedelta(hours=1)

# No input topic: orders arrive through the Client (saga.inbox), so the app says how many partitions
# its internal topics get. A waiting workflow leaves memory after `suspend_after` of inactivity
# (1 s here, so that the demo shows it; the default is 5 s).
app = p.App(f"{PREFIX}saga", partitions=4, suspend_after=timedelta(seconds=1))
app.output(APPROVALS_TOPIC, partitions=4)  # checked at start, created if missing: no emit creates a topic
order = app.workflow("order")        # one workflow per order id: its `run` happens once per id


# -- the outside world (fakes) -------------------------------------------------------------------
# Step bodies are at-least-once (a crash after the body ran but before its result committed runs it
# again), so each fake derives its ids from p.current_step().idempotency_key, as a real API would
# dedupe on it. Each body also appends a line to the ledger file named by SAGA_LEDGER (if set), so
# the demo can show which side effects ran, and how often.

def _ledger(order_id: str, what: str, ref: str) -> None:
    path = os.environ.get("SAGA_LEDGER")
    if path:
        with Path(path).open("a") as f:
            f.write(f"{order_id} {what} {ref} {p.current_step().idempotency_key}\n")


def _ref(prefix: str, *parts: object) -> str:
    key = p.current_step().idempotency_key   # stable across attempts, crashes and replays
    return prefix + hashlib.sha256(":".join([key, *map(str, parts)]).encode()).hexdigest()[:12]


def reserve_inventory(order_id: str, items: list[dict[str, Any]]) -> str:
    time.sleep(0.002)                          # "blocking I/O": sync bodies run on a worker thread
    ref = _ref("rsv_", order_id, items)
    _ledger(order_id, "reserve", ref)
    return ref


def release_inventory(order_id: str, reservation: str) -> str:
    time.sleep(0.002)
    _ledger(order_id, "release", reservation)
    return reservation


async def charge_payment(order_id: str, customer: str, total: float) -> str:
    await asyncio.sleep(0.005)                 # "network I/O": async bodies run on the event loop
    ref = _ref("pay_", order_id, customer, total)
    _ledger(order_id, "charge", ref)
    return ref


async def refund_payment(order_id: str, payment: str) -> str:
    await asyncio.sleep(0.005)
    ref = _ref("rfd_", order_id, payment)
    _ledger(order_id, "refund", ref)
    return ref


async def ship_order(order_id: str, address: str) -> str:
    await asyncio.sleep(0.005)
    ref = _ref("trk_", order_id, address)
    _ledger(order_id, "ship", ref)
    return ref


# -- the workflow --------------------------------------------------------------------------------

@order.run()
async def run(ctx: p.WorkflowContext, req: dict[str, Any]) -> dict[str, Any]:
    timeout = timedelta(seconds=float(req.get("approval_timeout_s", DEFAULT_APPROVAL_TIMEOUT.total_seconds())))
    steps: list[str] = []
    # What undoes each completed step; run in reverse order if the saga is called off.
    compensations: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []

    ctx.set("stage", "reserving inventory")
    reservation = await ctx.run("reserve", reserve_inventory, ctx.key, req["items"])
    steps.append(f"reserve {reservation}")
    compensations.append(("release", release_inventory, (ctx.key, reservation)))

    ctx.set("stage", "charging payment")
    payment = await ctx.run("charge", charge_payment, ctx.key, req["customer"], req["total"])
    steps.append(f"charge {payment}")
    compensations.append(("refund", refund_payment, (ctx.key, payment)))

    # A human approves or rejects through the Client with the awakeable id, published on `approvals`
    # (and kept in state for `status`). Waiting is a durable timer raced against the awakeable: the
    # workflow may leave memory meanwhile, and survives restarts.
    awakeable_id, approval = ctx.awakeable()
    ctx.set("stage", "awaiting approval")
    ctx.set("approval", awakeable_id)
    ctx.emit(APPROVALS_TOPIC, {"order": ctx.key, "awakeable": awakeable_id, "customer": req["customer"],
                               "total": req["total"], "timeout_s": timeout.total_seconds()}, key=ctx.key)
    try:
        verdict = await approval.with_timeout(timeout)
    except TimeoutError:
        reason = f"no approval within {timeout.total_seconds():g}s"
    except p.TerminalError as e:           # rejected (AwakeableRejected), or cancelled (InvocationCancelled)
        reason = f"{e.error_type}: {e.message}"
    else:
        ctx.set("stage", "shipping")
        tracking = await ctx.run("ship", ship_order, ctx.key, req.get("address", "?"))
        steps.append(f"ship {tracking}")
        ctx.set("stage", "shipped")
        return {"order": ctx.key, "status": "shipped", "approved_by": verdict, "tracking": tracking,
                "steps": steps, "compensations": []}

    ctx.set("stage", "compensating")
    undone = []
    for name, fn, args in reversed(compensations):
        undone.append(f"{name} {await ctx.run(name, fn, *args)}")
    ctx.set("stage", "cancelled")
    return {"order": ctx.key, "status": "cancelled", "reason": reason, "steps": steps, "compensations": undone}


@order.handler()                       # shared: runs next to `run`, reads its state
async def status(ctx: p.WorkflowSharedContext, _: Any) -> dict[str, Any]:
    return {"order": ctx.key, "stage": await ctx.get("stage"), "approval": await ctx.get("approval")}
