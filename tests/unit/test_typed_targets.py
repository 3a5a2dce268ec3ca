"""Typed targets, offline: mypy infers a call's result type from the handler (tests/typecheck), handler
definitions read their models from the type hints, and model values go to and from their plain form."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

import processor as p
from processor._app import target_shapes
from processor._models import dump, handler_shapes, shape_of
from tests.kafka_support import REPO


def test_mypy_infers_result_types_and_rejects_wrong_arguments() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          "tests/typecheck/typed_targets.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@dataclass
class Line:
    sku: str
    qty: int


@dataclass
class Order:
    id: str
    at: datetime
    lines: list[Line]
    note: str | None = None


class Payment(pydantic.BaseModel):
    amount: float


async def place(ctx: p.Context, order: Order) -> list[Line]:
    return order.lines


async def pay(ctx: p.Context, payment: Payment) -> Payment | None:
    return payment


async def plain(ctx: p.Context, value: dict[str, Any]) -> int:
    return 1


def test_handler_shapes_come_from_the_type_hints() -> None:
    i, o = handler_shapes(place)
    assert i.annotation is Order and not i.pydantic and o.annotation == list[Line]
    i, o = handler_shapes(pay)
    assert i.annotation is Payment and i.pydantic and o.pydantic
    i, o = handler_shapes(plain)
    assert not i.typed and not o.typed  # no model: values pass as the serde decoded them


def test_dataclasses_load_from_and_dump_to_their_plain_form() -> None:
    at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    order = Order("o", at, [Line("a", 2)])
    plain_order = dump(order)
    assert plain_order == {"id": "o", "at": "2026-01-02T03:04:00Z", "lines": [{"sku": "a", "qty": 2}], "note": None}
    assert shape_of(Order).load(plain_order) == order
    assert dump([Line("a", 1)]) == [{"sku": "a", "qty": 1}]
    with pytest.raises(p.SerdeError, match=r"Order.*\$\.lines\[0\]\.qty"):
        shape_of(Order).load({"id": "o", "at": "2026-01-02T03:04:00Z", "lines": [{"sku": "a", "qty": "x"}]})


def test_pydantic_models_load_and_dump_through_pydantic() -> None:
    assert dump(Payment(amount=3)) == {"amount": 3.0}
    assert shape_of(Payment | None).load({"amount": 2}) == Payment(amount=2)
    assert shape_of(Payment | None).load(None) is None
    with pytest.raises(p.SerdeError, match="Payment"):
        shape_of(Payment).load({"amount": "lots"})


def test_a_target_is_a_registered_function_a_ref_or_a_string() -> None:
    app = p.App("targets")
    svc = app.service("svc")
    registered = svc.handler()(place)
    assert target_shapes(registered)[0] == "svc/place"
    assert target_shapes(p.ref("svc/pay", Payment, Payment))[2].pydantic
    assert target_shapes("svc/x") == ("svc/x", shape_of(None), shape_of(None))
    with pytest.raises(p.ConfigurationError, match="not a handler"):
        target_shapes(plain)
    with pytest.raises(p.ConfigurationError, match="service/handler"):
        p.ref("nohandler")
