"""Checked by mypy --strict (tests/unit/test_typed_targets.py), never run: the result type of a call
through a handler function or a ``p.ref`` is the handler's output type, and an argument of the wrong
type is an error (each ``type: ignore`` below must be needed: --strict reports unused ones)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, assert_type

import processor as p

app = p.App("typing")
shop = app.service("shop")


@dataclass
class Order:
    id: str


@dataclass
class Receipt:
    order_id: str


@shop.handler()
async def place(ctx: p.Context, order: Order) -> Receipt:
    return Receipt(order.id)


@shop.handler()
async def outer(ctx: p.Context, order: Order) -> str:
    receipt = await ctx.call(place, order)
    assert_type(receipt, Receipt)
    assert_type(await ctx.call(p.ref("shop/place", Order, Receipt), order), Receipt)
    assert_type(await ctx.call("shop/place", {"id": "x"}), Any)
    assert_type(ctx.send(place, order), str)
    await ctx.call(place, "not an order")  # type: ignore[arg-type]
    return receipt.order_id


async def client_side(client: p.Client) -> None:
    assert_type(await client.call(place, Order("1")), Receipt)
    assert_type(await client.call(p.ref("shop/place", Order, Receipt), Order("1")), Receipt)
    assert_type(await client.call("shop/place", {"id": "1"}), Any)
    assert_type(await client.invoke(place, Order("1")), str)
    await client.call(place, {"id": "1"})  # type: ignore[arg-type]


def sync_side(client: p.SyncClient) -> None:
    assert_type(client.call(place, Order("1")), Receipt)
    assert_type(client.call(p.ref("shop/place", Order, Receipt), Order("1")), Receipt)
    client.call(p.ref("shop/place", Order, Receipt), 3)  # type: ignore[arg-type]


@shop.handler()
async def composed(ctx: p.Context, ids: list[str]) -> list[Any]:
    """gather is a durable future: select and with_timeout take it (tests/unit/test_handler_control.py)."""
    both = p.gather(*(ctx.attach(i) for i in ids))
    assert_type(both, p.DurableFuture[list[Any]])
    assert_type(await p.select(all=both, timer=ctx.sleep(timedelta(hours=1))), tuple[str, Any])
    return await p.gather(ctx.call(place, Order("o")), ctx.attach(ids[0])).with_timeout(timedelta(minutes=1))
