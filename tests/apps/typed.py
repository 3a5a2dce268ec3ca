"""Test app for typed targets and handler models: dataclass and pydantic inputs and outputs, called
by reference from a Client and from another handler (tests/e2e/test_typed_client.py,
tests/e2e/test_ingress.py). The app name comes from TYPED_APP; it has no input topics."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

import processor as p

app = p.App(os.environ.get("TYPED_APP", "typed"), partitions=4)


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int


@dataclass(frozen=True)
class Order:
    id: str
    placed_at: datetime
    lines: list[Line] = field(default_factory=list)


@dataclass(frozen=True)
class Receipt:
    order_id: str
    items: int
    placed_at: datetime
    approved: bool
    charged_by: str


class Payment(pydantic.BaseModel):
    order_id: str
    amount: float


class Charge(pydantic.BaseModel):
    payment: Payment
    approved: bool


shop = app.service("shop")
payments = app.service("payments")
carts = app.virtual_object("cart")
approvals = app.service("approvals")
PAY = p.ref("payments/pay", Payment, Charge)


@payments.handler()
async def pay(ctx: p.Context, payment: Payment) -> Charge:
    if not isinstance(payment, Payment):
        raise p.TerminalError(f"pay got a {type(payment).__name__}, not a Payment")
    if payment.amount < 0:
        raise p.TerminalError(f"a negative amount: {payment.amount}")
    return Charge(payment=payment, approved=payment.amount < 1000)


@shop.handler()
async def place(ctx: p.Context, order: Order) -> Receipt:
    if not isinstance(order, Order) or not isinstance(order.placed_at, datetime) or \
            not all(isinstance(x, Line) for x in order.lines):
        raise p.TerminalError(f"place got {order!r}, not an Order of Lines")
    amount = float(sum(x.qty for x in order.lines) * 10)
    by_function = await ctx.call(pay, Payment(order_id=order.id, amount=amount))
    by_ref = await ctx.call(PAY, Payment(order_id=order.id, amount=amount))
    if not isinstance(by_function, Charge) or not isinstance(by_ref, Charge) or by_function != by_ref:
        raise p.TerminalError(f"the calls returned {by_function!r} and {by_ref!r}, not equal Charges")
    return Receipt(order_id=order.id, items=sum(x.qty for x in order.lines), placed_at=order.placed_at,
                   approved=by_function.approved, charged_by="payments/pay")


@carts.handler()
async def add(ctx: p.ObjectContext, line: Line) -> list[Line]:
    lines = [Line(**x) for x in (await ctx.get("lines") or [])]
    lines.append(line)
    ctx.set("lines", lines)
    return lines


@shop.handler()
async def echo(ctx: p.Context, value: Any) -> Any:
    return value


@approvals.handler()
async def ask(ctx: p.Context, request: dict[str, Any]) -> dict[str, Any]:
    """Waits for an awakeable completed from outside (a webhook through the ingress): its id is
    written to the file TYPED_AWAKEABLES names, one line per request, as '<request id> <awakeable id>'."""
    awk_id, decision = ctx.awakeable()
    await ctx.run("publish", _publish, request["id"], awk_id)
    try:
        return {"id": request["id"], "decision": await decision}
    except p.TerminalError as e:
        return {"id": request["id"], "rejected": e.message}


def _publish(request_id: str, awakeable_id: str) -> None:
    with open(os.environ["TYPED_AWAKEABLES"], "a") as f:
        f.write(f"{request_id} {awakeable_id}\n")


@shop.handler()
async def ship(ctx: p.Context, order: Order) -> None:
    """Bound to the topic TYPED_ORDERS names (when set): emits the order it got, as typed, to TYPED_OUT."""
    ctx.emit(os.environ["TYPED_OUT"], {"id": order.id, "type": type(order).__name__,
                                       "line_types": [type(x).__name__ for x in order.lines]}, key=order.id)


if os.environ.get("TYPED_ORDERS"):
    app.subscribe(os.environ["TYPED_ORDERS"], ship)


signups = app.workflow("signup")


@signups.run()
async def run(ctx: p.WorkflowContext, line: Line) -> dict[str, Any]:
    """A workflow run (once per key), started over HTTP by the ingress test."""
    return {"key": ctx.key, "sku": line.sku, "invocation": ctx.invocation_id}
