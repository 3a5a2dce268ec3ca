"""The classic order flow as a virtual object: one ``order`` per order id, placed exactly once.

Run it with ``python -m processor run examples.orders.app:app --bootstrap-servers HOST:PORT
--state-dir DIR`` (see README.md next to this file). Topics: input ``orders``, output
``order-events``; the app id ``shop`` names the consumer group and the internal topics
``shop.inbox``, ``shop.changelog`` and ``shop.dlq``. ``ORDERS_PREFIX`` (default empty) is put in
front of all three names so that tests can run isolated copies side by side.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import processor as p

PREFIX = os.environ.get("ORDERS_PREFIX", "")
INPUT_TOPIC = f"{PREFIX}orders"
OUTPUT_TOPIC = f"{PREFIX}order-events"

app = p.App(f"{PREFIX}shop")                # app id: consumer group + internal topic prefix
orders = app.virtual_object("order")        # keyed by the Kafka record key: the order id
app.output(OUTPUT_TOPIC, partitions=4)      # checked at start, created if missing: no emit creates a topic


# -- the outside world (fakes) -------------------------------------------------------------------
# Step bodies are at-least-once: a crash after the body ran but before its result committed runs it
# again. Real payment and inventory APIs take an idempotency key for exactly that reason; the fakes
# derive their ids from it, so a re-run body returns the same payment id.

async def charge_card(customer: str, total: float) -> str:
    """Charge `customer`; returns the payment id. An async step body: runs on the event loop."""
    key = p.current_step().idempotency_key        # stable across attempts, crashes and replays
    await asyncio.sleep(0.005)                    # "network I/O"
    return "pay_" + hashlib.sha256(f"{key}:{customer}:{total}".encode()).hexdigest()[:16]


def reserve_item(sku: str, qty: int) -> str:
    """Reserve `qty` of `sku`; returns a reservation id. A sync step body: runs on a worker thread."""
    key = p.current_step().idempotency_key
    time.sleep(0.002)                             # "blocking I/O"
    return "rsv_" + hashlib.sha256(f"{key}:{sku}:{qty}".encode()).hexdigest()[:12]


# -- the handler ---------------------------------------------------------------------------------

@orders.handler()                                 # exclusive: one invocation per order id at a time
async def place(ctx: p.ObjectContext, order: dict[str, Any]) -> dict[str, Any]:
    total = order.get("total")
    items = order.get("items")
    if not isinstance(total, int | float) or total < 0:
        # A TerminalError fails the invocation for good: recorded, never retried. (Any other
        # exception escaping the handler is retried with the app's invocation RetryPolicy.)
        raise p.TerminalError(f"order {ctx.key}: invalid total {total!r} (must be a number >= 0)",
                              error_type="InvalidOrder")
    if not isinstance(items, list) or not items:
        raise p.TerminalError(f"order {ctx.key}: no items", error_type="InvalidOrder")

    payment = await ctx.run("charge", charge_card, order["customer"], total)
    reservations = []
    for item in items:
        reservations.append(await ctx.run("reserve", reserve_item, item["sku"], item["qty"]))

    ctx.set("status", "placed")
    ctx.set("payment", payment)
    ctx.set("items", items)
    event = {"order": ctx.key, "status": "placed", "customer": order["customer"], "total": total,
             "payment": payment, "reservations": reservations}
    ctx.emit(OUTPUT_TOPIC, event, key=ctx.key)
    return event


app.subscribe(INPUT_TOPIC, place)                 # each record on `orders` starts one invocation
