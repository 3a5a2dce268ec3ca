"""The order flow under ``processor.testing``: no Kafka, the engine's own code paths, seconds.

Run with ``python -m pytest examples/orders``. Every runtime replays each invocation in flight from
its journal after every commit that grew it (``always_replay=True``): a handler whose replay calls
other actions than it journaled fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

import processor as p
from examples.orders.app import INPUT_TOPIC, OUTPUT_TOPIC, app
from processor.testing import TestRuntime

ORDER = {"customer": "ada", "total": 42.5, "items": [{"sku": "book-42", "qty": 1}, {"sku": "mug-7", "qty": 2}]}


@pytest.fixture
def rt() -> Iterator[TestRuntime]:
    with TestRuntime(app, always_replay=True) as runtime:
        yield runtime


def test_a_good_order_is_charged_reserved_recorded_and_announced_once(rt: TestRuntime) -> None:
    rt.send(INPUT_TOPIC, ORDER, key="o-1")
    [event] = rt.emitted(OUTPUT_TOPIC)
    assert (event["order"], event["status"], event["customer"]) == ("o-1", "placed", "ada")
    assert event["payment"].startswith("pay_") and len(event["reservations"]) == 2
    assert rt.state("order", "o-1") == {"status": "placed", "payment": event["payment"], "items": ORDER["items"]}


def test_the_same_order_id_twice_runs_twice_in_arrival_order_and_state_outlives_a_day(rt: TestRuntime) -> None:
    rt.send(INPUT_TOPIC, ORDER, key="o-2")
    rt.advance(timedelta(hours=24))  # nothing of the order waits on time: a day later it is all still there
    assert rt.state("order", "o-2")["status"] == "placed"
    rt.send(INPUT_TOPIC, {**ORDER, "total": 1.0}, key="o-2")
    assert [e["total"] for e in rt.emitted(OUTPUT_TOPIC)] == [42.5, 1.0]


def test_an_invalid_order_fails_for_good_and_emits_nothing(rt: TestRuntime) -> None:
    with pytest.raises(p.TerminalError, match="invalid total") as failed:
        rt.invoke("order/place", {**ORDER, "total": -5}, key="o-3")
    assert failed.value.error_type == "InvalidOrder"
    assert rt.emitted(OUTPUT_TOPIC) == [] and rt.state("order", "o-3") == {}


def test_a_malformed_record_goes_to_the_dead_letter_topic(rt: TestRuntime) -> None:
    rt.send(INPUT_TOPIC, b"{not json", key="o-4")
    [dead] = rt.dead_letters()
    assert dead.key == "o-4" and dead.headers["processor.error.class"] == b"SerdeError"
    assert rt.emitted(OUTPUT_TOPIC) == []
