"""The order saga under ``processor.testing``: approvals resolved, rejected, or timed out after a
day skipped in milliseconds; every in-flight invocation replayed from its journal after each commit
that grew it (``always_replay=True``). Run with ``python -m pytest examples/saga``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from examples.saga.app import APPROVALS_TOPIC, app
from processor.testing import NotFinished, TestRuntime

DAY = timedelta(hours=24)
REQUEST = {"customer": "ada", "total": 30.0, "items": [{"sku": "lamp-12", "qty": 1}], "address": "1 Main St",
           "approval_timeout_s": DAY.total_seconds()}


@pytest.fixture
def rt() -> Iterator[TestRuntime]:
    with TestRuntime(app, always_replay=True) as runtime:
        yield runtime


def _awaiting_approval(rt: TestRuntime, order_id: str) -> tuple[str, str]:
    """Submit the saga; it reserves, charges and asks for an approval. (run id, awakeable id)"""
    inv = rt.submit_workflow("order", order_id, REQUEST)
    [ask] = rt.emitted(APPROVALS_TOPIC)
    assert ask["order"] == order_id and ask["timeout_s"] == DAY.total_seconds()
    assert rt.invoke("order/status", None, key=order_id) == {
        "order": order_id, "stage": "awaiting approval", "approval": ask["awakeable"]}
    with pytest.raises(NotFinished):
        rt.result(inv)
    return inv, ask["awakeable"]


def test_an_approved_order_ships(rt: TestRuntime) -> None:
    inv, awakeable = _awaiting_approval(rt, "o-1")
    rt.advance(timedelta(hours=23))  # within the day: still waiting
    assert rt.status(inv) in ("running", "suspended")
    rt.resolve_awakeable(awakeable, "grace")
    out = rt.result(inv)
    assert (out["status"], out["approved_by"], out["compensations"]) == ("shipped", "grace", [])
    assert [s.split()[0] for s in out["steps"]] == ["reserve", "charge", "ship"]
    assert rt.state("order", "o-1")["stage"] == "shipped"


def test_no_approval_within_a_day_undoes_the_charge_then_the_reservation(rt: TestRuntime) -> None:
    inv, _ = _awaiting_approval(rt, "o-2")
    rt.advance(DAY)  # the durable timer raced against the approval fires: 24 hours in milliseconds
    out = rt.result(inv)
    assert (out["status"], out["reason"]) == ("cancelled", "no approval within 86400s")
    assert [c.split()[0] for c in out["compensations"]] == ["refund", "release"]
    kinds = [(e.kind, e.name) for e in rt.journal(inv)]
    assert ("run", "refund") in kinds and ("run", "ship") not in kinds


def test_a_rejected_order_is_compensated(rt: TestRuntime) -> None:
    inv, awakeable = _awaiting_approval(rt, "o-3")
    rt.reject_awakeable(awakeable, "fraud check failed")
    out = rt.result(inv)
    assert out["status"] == "cancelled" and "fraud check failed" in out["reason"]
