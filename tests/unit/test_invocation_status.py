"""The invocation status machine: every move not in the table raises, and rows survive encoding."""

from __future__ import annotations

import itertools

import pytest

from processor._engine.core import Failure
from processor._engine.records import IllegalTransition, InvocationRow, Status

Q, R, B, P, S, C, F = (Status.QUEUED, Status.RUNNING, Status.BACKING_OFF, Status.PAUSED, Status.SUSPENDED,
                       Status.COMPLETED, Status.FAILED)

LEGAL = {
    (Q, R), (Q, F),
    (R, R), (R, B), (R, P), (R, S), (R, C), (R, F),
    (B, R), (B, F),
    (P, R), (P, F),
    (S, R), (S, F),
}


def _row(status: Status) -> InvocationRow:
    return InvocationRow(id="inv-1", service="order", handler="place", key="o-1", status=status,
                         input=b"{}", created_ms=1)


@pytest.mark.parametrize(("src", "dst"), sorted(LEGAL, key=lambda m: (m[0].value, m[1].value)))
def test_legal_moves_change_the_status_and_the_given_fields(src: Status, dst: Status) -> None:
    moved = _row(src).moved(dst, attempt=3)
    assert (moved.status, moved.attempt, moved.id) == (dst, 3, "inv-1")


@pytest.mark.parametrize(("src", "dst"), [m for m in itertools.product(Status, Status) if m not in LEGAL])
def test_every_other_move_raises_illegal_transition_naming_both_states(src: Status, dst: Status) -> None:
    with pytest.raises(IllegalTransition, match=f"inv-1: {src.value} -> {dst.value}"):
        _row(src).moved(dst)


def test_finished_states_are_terminal_and_nothing_leaves_them() -> None:
    assert {s for s in Status if s.terminal} == {C, F}
    for s, t in itertools.product((C, F), Status):
        with pytest.raises(IllegalTransition):
            _row(s).moved(t)


def test_illegal_transition_is_an_exception_not_an_assert() -> None:
    assert issubclass(IllegalTransition, Exception)
    assert not issubclass(IllegalTransition, AssertionError)


def test_a_moved_row_is_a_new_value_and_the_old_one_is_unchanged() -> None:
    row = _row(R)
    failed = row.moved(F, failure=Failure(type="TerminalError", message="out of stock"), finished_ms=9)
    assert row.status is R and row.failure is None
    assert failed.failure == Failure(type="TerminalError", message="out of stock")


def test_rows_round_trip_through_their_wire_encoding() -> None:
    row = _row(Q).moved(R).moved(P, paused_reason="diverged", attempt=2, inbox_seq=7)
    row = InvocationRow(**{**{f: getattr(row, f) for f in row.__dataclass_fields__},
                           "input_headers": {"trace": b"abc"}, "source_topic": "orders",
                           "source_partition": 3, "source_offset": 42})
    assert InvocationRow.decode(row.encode()) == row


def test_leaving_paused_forgets_the_pause_reason() -> None:
    paused = _row(R).moved(P, paused_reason="diverged at #0")
    assert paused.paused_reason == "diverged at #0"
    assert paused.moved(R).paused_reason is None
    assert paused.moved(F, failure=Failure(type="Killed", message="by operator")).paused_reason is None


def test_a_backing_off_row_keeps_the_last_error_until_it_runs_again() -> None:
    error = Failure(type="KeyError", message="'amount'")
    backing_off = _row(R).moved(Status.BACKING_OFF, attempt=3, retry_at_ms=10, failure=error)
    assert backing_off.failure == error, "an operator sees why it is stuck retrying"
    assert InvocationRow.decode(backing_off.encode()).failure == error
    assert backing_off.moved(R).failure is None
    assert backing_off.moved(F, failure=Failure(type="Killed", message="by operator")).failure.type == "Killed"


def test_a_row_paused_after_its_retries_keeps_the_last_error_until_it_runs_again() -> None:
    error = Failure(type="KeyError", message="'amount'")
    paused = _row(R).moved(P, attempt=20, paused_reason="retries exhausted after 20 attempt(s)", failure=error)
    assert paused.failure == error
    assert (paused.moved(R).failure, paused.moved(R).paused_reason) == (None, None)
    assert paused.moved(F, failure=Failure(type="Killed", message="by operator")).failure.type == "Killed"
