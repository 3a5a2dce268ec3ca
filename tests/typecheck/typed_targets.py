"""Checked by mypy --strict (tests/unit/test_typed_targets.py), never run: the result type of a call
through a handler function or a ``p.ref`` is the handler's output type, and an argument of the wrong
type is an error (each ``type: ignore`` below must be needed: --strict reports unused ones)."""

from __future__ import annotations

from dataclasses import dataclass
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
