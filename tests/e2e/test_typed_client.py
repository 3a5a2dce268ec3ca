"""Typed targets against a real processor: a Client calls handlers through the functions themselves
or ``p.ref``, dataclass and pydantic inputs and outputs arrive as their models (also through a
handler's own ``ctx.call``), string targets keep returning plain values, a value that does not fit
the model fails with the field that does not, concurrent calls on one Client share one results
reader, and the SyncClient does the same from synchronous code."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

import processor as p
from tests.apps import typed
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import run
from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = timedelta(seconds=60)
AT = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def start_typed(kafka: Kafka, spawn: Spawner, tmp_path: Path,
                env: dict[str, str] | None = None) -> tuple[str, ProcessorProcess]:
    name = kafka.unique("typed")
    proc = spawn("tests.apps.typed:app", {"TYPED_APP": name, "TYPED_AWAKEABLES": str(tmp_path / "awakeables"),
                                          **(env or {})})
    proc.start().wait_ready()
    return name, proc


def results_readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("results-")]


def test_handlers_called_by_reference_take_and_return_their_models(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name, proc = start_typed(kafka, spawn, tmp_path)
    order = typed.Order(id="o1", placed_at=AT, lines=[typed.Line("a", 2), typed.Line("b", 3)])

    async def calls() -> tuple[typed.Receipt, typed.Receipt, object, list[typed.Line]]:
        async with p.Client(kafka.bootstrap, name) as client:
            by_function = await client.call(typed.place, order, timeout=TIMEOUT)
            by_ref = await client.call(p.ref("shop/place", typed.Order, typed.Receipt), order, timeout=TIMEOUT)
            by_string = await client.call("shop/place", {"id": "o2", "placed_at": AT.isoformat(), "lines": []},
                                          timeout=TIMEOUT)
            cart = await client.call(typed.add, typed.Line("c", 1), key="cart-1", timeout=TIMEOUT)
            return by_function, by_ref, by_string, cart

    by_function, by_ref, by_string, cart = run(calls())
    expected = typed.Receipt(order_id="o1", items=5, placed_at=AT, approved=True, charged_by="payments/pay")
    assert by_function == expected and by_ref == expected  # the handler checked its ctx.calls got Charges
    assert by_string == {"order_id": "o2", "items": 0, "placed_at": "2026-11-30T06:00:00Z", "approved": True,
                         "charged_by": "payments/pay"}  # a string target: the plain value, as before
    assert cart == [typed.Line("c", 1)]
    assert proc.stop() == 0


def test_a_value_that_does_not_fit_the_handlers_model_fails_with_the_field(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name, proc = start_typed(kafka, spawn, tmp_path)

    async def bad() -> BaseException | None:
        async with p.Client(kafka.bootstrap, name) as client:
            try:
                await client.call("shop/place", {"id": "o3", "placed_at": AT.isoformat(),
                                                 "lines": [{"sku": "a", "qty": "many"}]}, timeout=TIMEOUT)
            except p.TerminalError as e:
                return e
        return None
    err = run(bad())
    assert isinstance(err, p.TerminalError) and err.error_type == "SerdeError", repr(err)
    assert "Order" in err.message and "$.lines[0].qty" in err.message, err.message
    assert proc.stop() == 0


def test_concurrent_calls_on_one_client_share_one_results_reader(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name, proc = start_typed(kafka, spawn, tmp_path)
    before = len(results_readers())

    async def many() -> tuple[list[object], int]:
        async with p.Client(kafka.bootstrap, name) as client:
            got = await asyncio.gather(*(client.call("shop/echo", {"n": i}, timeout=TIMEOUT) for i in range(40)))
            got += [await client.call("shop/echo", {"n": i}, timeout=TIMEOUT) for i in range(40, 45)]
            return list(got), len(results_readers()) - before
    got, readers = run(many())
    assert got == [{"n": i} for i in range(45)]  # each call got its own invocation's result
    assert readers == 1
    assert len(results_readers()) == before  # closing the Client stopped it
    assert proc.stop() == 0


def test_the_sync_client_calls_by_reference_from_synchronous_code(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name, proc = start_typed(kafka, spawn, tmp_path)
    with p.SyncClient(kafka.bootstrap, name) as client:
        assert client.call(typed.add, typed.Line("x", 1), key="cart-2", timeout=TIMEOUT) == [typed.Line("x", 1)]
        inv = client.invoke(typed.add, typed.Line("y", 2), key="cart-2", idempotency_key="once")
        assert client.result(inv, timeout=TIMEOUT) == [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 2}]
        again = client.invoke(typed.add, typed.Line("y", 2), key="cart-2", idempotency_key="once")
        assert again == inv  # the same idempotency key names the same invocation
        assert client.call(typed.pay, typed.Payment(order_id="big", amount=5000.0), timeout=TIMEOUT) == \
            typed.Charge(payment=typed.Payment(order_id="big", amount=5000.0), approved=False)
    with pytest.raises(p.ProcessorError, match="closed"):
        client.call("shop/echo", 1)
    assert proc.stop() == 0


def test_a_bound_record_that_does_not_fit_the_model_is_dead_lettered_with_the_field(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    orders, out = kafka.create_topic(kafka.unique("orders"), 2), kafka.create_topic(kafka.unique("out"), 1)
    name, proc = start_typed(kafka, spawn, tmp_path, {"TYPED_ORDERS": orders, "TYPED_OUT": out})
    good = {"id": "good", "placed_at": AT.isoformat(), "lines": [{"sku": "a", "qty": 1}]}
    bad = {"id": "bad", "placed_at": AT.isoformat(), "lines": [{"sku": "a", "qty": "one"}]}
    kafka.produce(orders, [(b"bad", orjson.dumps(bad)), (b"good", orjson.dumps(good))])
    wait_until(lambda: kafka.drain(out) and kafka.drain(f"{name}.dlq"), 60, "the output and the dead letter")
    assert [orjson.loads(r.value or b"") for r in kafka.drain(out)] == [
        {"id": "good", "type": "Order", "line_types": ["Line"]}]
    dead = kafka.drain(f"{name}.dlq")
    assert len(dead) == 1 and dead[0].key == b"bad", dead
    reason = dict(dead[0].headers or []).get("processor.error", b"").decode()
    assert "$.lines[0].qty" in reason, dead[0].headers
    assert proc.stop() == 0
