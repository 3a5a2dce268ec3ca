"""The agent loop under ``processor.testing``: a risky tool waits up to 24 hours for a human — skipped
forward in milliseconds — and every in-flight invocation is replayed from its journal after each
commit that grew it (``always_replay=True``). Run with ``python -m pytest examples/agent``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from examples.agent.app import APPROVAL_WAIT, app
from processor.testing import TestRuntime

PROMPT = {"prompt": "My order o-77 arrived broken, please help."}


@pytest.fixture
def rt() -> Iterator[TestRuntime]:
    with TestRuntime(app, always_replay=True) as runtime:
        yield runtime


def _waiting_for_approval(rt: TestRuntime, task: str) -> tuple[str, str]:
    inv = rt.submit_workflow("agent", task, PROMPT)
    status = rt.invoke("agent/status", None, key=task)
    assert status["stage"] == "turn 2: awaiting approval for issue_refund"
    pending = status["pending_approval"]
    assert (pending["tool"], pending["args"]["amount"]) == ("issue_refund", 18.0)
    return inv, pending["awakeable"]


def test_an_approved_refund_is_issued_and_the_customer_told(rt: TestRuntime) -> None:
    inv, awakeable = _waiting_for_approval(rt, "t-1")
    rt.resolve_awakeable(awakeable, "support-lead")
    out = rt.result(inv)
    assert out["answer"] == "Order o-77: refunded; customer ada@example.com notified." and out["turns"] == 4
    refund = next(m for m in out["history"] if m.get("tool") == "issue_refund" and m["role"] == "tool")
    assert refund["content"]["approved_by"] == "support-lead"
    steps = [e.name for e in rt.journal(inv) if e.kind == "run"]
    assert steps == ["model", "tool:lookup_order", "model", "tool:issue_refund", "model", "tool:send_email", "model"]


def test_without_an_approval_for_24_hours_the_agent_gives_up_on_the_refund(rt: TestRuntime) -> None:
    inv, _ = _waiting_for_approval(rt, "t-2")
    rt.advance(APPROVAL_WAIT - timedelta(seconds=1))
    assert rt.status(inv) in ("running", "suspended")
    rt.advance(timedelta(seconds=1))  # the 24-hour timer fires
    out = rt.result(inv)
    assert out["answer"] == "Order o-77: not refunded; customer ada@example.com notified."
    refund = next(m for m in out["history"] if m.get("tool") == "issue_refund" and m["role"] == "tool")
    assert refund["content"] == {"error": f"no approval within {APPROVAL_WAIT}"}
    assert "tool:issue_refund" not in [e.name for e in rt.journal(inv)]
