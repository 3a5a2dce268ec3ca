"""The sans-IO invocation core, driven with plain lists of journal entries."""

from __future__ import annotations

import pytest

from processor._engine.core import Entry, Execute, Failure, InvocationCore, Replay, retry_entry
from processor._errors import NondeterminismError


def test_a_fresh_invocation_executes_every_action_in_call_order() -> None:
    core = InvocationCore("inv-1")
    assert core.call("run", "charge") == Execute(seq=0)
    assert core.call("set", "status") == Execute(seq=1)
    assert not core.replaying


def test_replay_returns_journaled_outcomes_then_executes_past_the_end() -> None:
    journal = [Entry(seq=0, kind="run", name="charge", value=b'"pay-1"'),
               Entry(seq=1, kind="get", name="count", value=b"3")]
    core = InvocationCore("inv-1", journal)
    assert core.replaying
    assert core.call("run", "charge") == Replay(seq=0, entry=journal[0])
    assert core.call("get", "count") == Replay(seq=1, entry=journal[1])
    assert not core.replaying
    assert core.call("run", "reserve") == Execute(seq=2)


def test_a_different_action_at_a_journaled_position_is_nondeterminism_showing_both() -> None:
    core = InvocationCore("inv-7", [Entry(seq=0, kind="run", name="charge")])
    with pytest.raises(NondeterminismError) as e:
        core.call("run", "refund")
    assert e.value.seq == 0
    assert "run('charge')" in e.value.journaled
    assert "run('refund')" in e.value.replayed
    assert "inv-7" in str(e.value)


def test_concurrent_actions_replay_identically_whatever_finished_first() -> None:
    first = InvocationCore("inv-1")
    a, b = first.call("run", "a"), first.call("run", "b")
    assert (a, b) == (Execute(seq=0), Execute(seq=1))
    # b finished first, then a: the journal is keyed by call position, not completion order
    first.record(Entry(seq=1, kind="run", name="b", value=b"2"))
    first.record(Entry(seq=0, kind="run", name="a", value=b"1"))
    again = InvocationCore("inv-1", first.journal())
    assert again.call("run", "a") == Replay(seq=0, entry=Entry(seq=0, kind="run", name="a", value=b"1"))
    assert again.call("run", "b") == Replay(seq=1, entry=Entry(seq=1, kind="run", name="b", value=b"2"))


def test_a_step_still_retrying_is_executed_again_with_its_attempt_count() -> None:
    pending = retry_entry(Entry(seq=0, kind="run", name="charge"), attempts=2, retry_at_ms=1000,
                          failure=Failure(type="IOError", message="down"))
    core = InvocationCore("inv-1", [pending])
    assert core.call("run", "charge") == Execute(seq=0, retrying=pending)


def test_recording_an_action_that_was_never_called_is_refused() -> None:
    core = InvocationCore("inv-1")
    core.call("run", "a")
    with pytest.raises(ValueError, match="never called"):
        core.record(Entry(seq=0, kind="run", name="b"))
    core.record(Entry(seq=0, kind="run", name="a"))
    with pytest.raises(ValueError, match="already journaled"):
        core.record(Entry(seq=0, kind="run", name="a"))


def test_entries_round_trip_through_the_wire_format() -> None:
    e = Entry(seq=3, kind="run", name="x", value=None, failure=Failure(type="T", message="m"), attempts=4)
    assert Entry.decode(e.encode()) == e


def test_random_seed_is_a_function_of_the_invocation_id() -> None:
    assert InvocationCore("a").random_seed() == InvocationCore("a").random_seed()
    assert InvocationCore("a").random_seed() != InvocationCore("b").random_seed()
