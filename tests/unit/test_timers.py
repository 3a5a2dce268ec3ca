from __future__ import annotations

import random
from collections import Counter

import pytest

from processor.state.keys import TIMER, timer_key
from processor.state.memory import MemoryStore
from processor.state.overlay import PartitionState
from processor.timers import Fired, Timer, TimerIndex, TimerKind, encode_timer, fire


def timer(due: int, inv: str = "inv", seq: int = 0, payload: bytes = b"p") -> Timer:
    return Timer(due_ms=due, invocation_id=inv, seq=seq, payload=payload)


def commit(ps: PartitionState) -> None:
    """What the engine does once a cycle's Kafka transaction committed."""
    ps.applied(ps.seal(), ps.store.changelog_offset() + 1)


@pytest.fixture
def ps() -> PartitionState:
    return PartitionState(MemoryStore())


def test_timers_pop_in_due_order_and_only_when_due(ps: PartitionState) -> None:
    idx = TimerIndex(ps, window_ms=1_000)
    idx.load(now_ms=0)
    for due, inv in [(300, "c"), (100, "a"), (200, "b"), (100, "a2"), (5_000, "late")]:
        idx.schedule(timer(due, inv, payload=inv.encode()))
    assert idx.next_due_ms() == 100
    assert idx.pop_due(50) == []
    got = idx.pop_due(250)
    assert [(t.due_ms, t.invocation_id, t.payload) for t in got] == [
        (100, "a", b"a"), (100, "a2", b"a2"), (200, "b", b"b")]
    assert ps.get(timer_key(100, "a", 0)) is None, "a fired timer's row is deleted"
    assert idx.next_due_ms() == 300
    assert [t.invocation_id for t in idx.pop_due(10_000)] == ["c", "late"]
    assert idx.next_due_ms() is None
    assert idx.pop_due(10**9) == []


def test_pop_due_respects_the_limit_and_resumes(ps: PartitionState) -> None:
    idx = TimerIndex(ps)
    idx.load(0)
    for i in range(25):
        idx.schedule(timer(10 + i, f"i{i}"))
    first = idx.pop_due(100, limit=10)
    rest = idx.pop_due(100, limit=100)
    assert [t.due_ms for t in first + rest] == list(range(10, 35))


def test_a_timer_due_in_the_past_fires_on_the_next_pop(ps: PartitionState) -> None:
    idx = TimerIndex(ps, window_ms=1_000)
    idx.load(now_ms=1_000_000)
    idx.schedule(timer(5, "overdue"))
    assert idx.next_due_ms() == 5
    assert [t.invocation_id for t in idx.pop_due(1_000_000)] == ["overdue"]


def test_timers_that_fell_due_while_nothing_ran_fire_on_start(ps: PartitionState) -> None:
    ps.store.apply([(timer_key(100, "slept", 0), b"x"), (timer_key(10**7, "future", 0), b"y")], 2)
    idx = TimerIndex(ps, window_ms=1_000)
    idx.load(now_ms=50_000)
    assert idx.in_memory() == 1
    assert [t.invocation_id for t in idx.pop_due(50_000)] == ["slept"]
    assert idx.next_due_ms() == 10**7


def test_a_cancelled_timer_never_fires(ps: PartitionState) -> None:
    idx = TimerIndex(ps, window_ms=1_000)
    idx.load(0)
    idx.schedule(timer(100, "a"))
    idx.schedule(timer(100, "b"))
    idx.schedule(timer(50_000, "far"))
    idx.cancel(100, "a", 0)
    idx.cancel(50_000, "far", 0)
    assert [t.invocation_id for t in idx.pop_due(10**6)] == ["b"]
    assert list(ps.scan(TIMER)) == []


def test_cancel_then_reschedule_of_the_same_timer_fires_once(ps: PartitionState) -> None:
    idx = TimerIndex(ps)
    idx.load(0)
    idx.schedule(timer(100, "a", payload=b"v1"))
    idx.cancel(100, "a", 0)
    idx.schedule(timer(100, "a", payload=b"v2"))
    assert [t.payload for t in idx.pop_due(200)] == [b"v2"]
    assert idx.pop_due(200) == []


def test_a_popped_timer_never_fires_again_even_after_reload(ps: PartitionState) -> None:
    idx = TimerIndex(ps)
    idx.load(0)
    idx.schedule(timer(100, "a"))
    commit(ps)
    assert len(idx.pop_due(100)) == 1
    commit(ps)
    idx.load(100)
    assert idx.pop_due(10**6) == []


def test_window_slides_over_100k_timers_holding_only_a_window_in_memory(ps: PartitionState) -> None:
    window = 1_000
    n = 100_000
    idx = TimerIndex(ps, window_ms=window)
    idx.load(0)
    rng = random.Random(1)
    dues = [rng.randrange(0, 1_000_000) for _ in range(n)]  # ~100 timers per ms-window of 1000
    for i, due in enumerate(dues):
        idx.schedule(timer(due, f"inv-{i}", i % 7))
    commit(ps)
    per_window = max(Counter(d // window for d in dues).values())
    bound = 2 * per_window  # the window of the last pop plus the next one
    assert idx.in_memory() <= bound

    fired: list[int] = []
    peak = 0
    now = 0
    while now <= 1_000_000:
        now += 250
        fired.extend(t.due_ms for t in idx.pop_due(now, limit=10_000))
        peak = max(peak, idx.in_memory())
        commit(ps)
    assert fired == sorted(dues)
    assert peak <= bound, f"{peak} timers in memory, bound {bound}"
    assert ps.store.count(TIMER) == 0


def test_next_due_slides_to_the_next_timer_on_disk(ps: PartitionState) -> None:
    idx = TimerIndex(ps, window_ms=1_000)
    idx.load(0)
    idx.schedule(timer(10_000_000, "far"))
    idx.schedule(timer(10_000_500, "far2"))
    idx.schedule(timer(99_000_000, "farther"))
    assert idx.in_memory() == 0
    assert idx.next_due_ms() == 10_000_000
    assert idx.in_memory() == 2
    assert [t.invocation_id for t in idx.pop_due(10_000_600)] == ["far", "far2"]
    assert idx.next_due_ms() == 99_000_000


def test_a_backlog_of_overdue_timers_is_loaded_in_slices(ps: PartitionState) -> None:
    ps.store.apply([(timer_key(i, f"i{i}", 0), b"") for i in range(5_000)], 1)
    idx = TimerIndex(ps, window_ms=1_000, max_load=500)
    idx.load(now_ms=10_000)
    assert idx.in_memory() <= 500
    fired = [t.due_ms for t in idx.pop_due(10_000, limit=10_000)]
    assert fired == list(range(5_000))


def test_schedule_discarded_before_commit_never_fires(ps: PartitionState) -> None:
    idx = TimerIndex(ps, window_ms=1_000)
    idx.load(0)
    idx.schedule(timer(100, "kept"))
    commit(ps)
    idx.schedule(timer(100, "rolled-back"))
    idx.schedule(timer(90_000, "rolled-back-far"))
    ps.seal()  # in flight when the transaction aborts
    idx.schedule(timer(200, "open-rolled-back"))
    ps.discard()
    assert [t.invocation_id for t in idx.pop_due(100_000)] == ["kept"]
    commit(ps)
    idx.load(0)
    assert idx.pop_due(10**6) == []
    assert idx.next_due_ms() is None


def test_a_pop_rolled_back_by_discard_fires_again_after_reload(ps: PartitionState) -> None:
    idx = TimerIndex(ps)
    idx.load(0)
    idx.schedule(timer(100, "a"))
    commit(ps)
    assert len(idx.pop_due(100)) == 1
    ps.discard()  # the cycle that fired it aborted: the timer is still owed
    idx.load(100)
    assert [t.invocation_id for t in idx.pop_due(100)] == ["a"]


def test_sealed_but_uncommitted_schedules_are_visible_and_fire(ps: PartitionState) -> None:
    idx = TimerIndex(ps, window_ms=100)
    idx.load(0)
    idx.schedule(timer(5_000, "far"))
    sealed = ps.seal()
    assert idx.next_due_ms() == 5_000
    ps.applied(sealed, 1)
    assert [t.invocation_id for t in idx.pop_due(5_000)] == ["far"]


def test_fire_hands_each_due_timer_decoded_to_its_kinds_action_in_due_order() -> None:
    due = [Timer(due_ms=5, invocation_id="inv-0-a", seq=2, payload=encode_timer(TimerKind.SLEEP)),
           Timer(due_ms=6, invocation_id="inv-0-b", seq=0, payload=encode_timer(TimerKind.SEND, 3, b"cmd"))]
    got: list[Fired] = []
    assert fire(due, {TimerKind.SLEEP: got.append, TimerKind.SEND: got.append}) == 2
    assert [(f.timer.invocation_id, f.kind, f.attempt, f.data) for f in got] == [
        ("inv-0-a", TimerKind.SLEEP, 0, None), ("inv-0-b", TimerKind.SEND, 3, b"cmd")]
    with pytest.raises(KeyError):  # every kind a partition schedules, it handles
        fire(due, {TimerKind.SEND: got.append})
