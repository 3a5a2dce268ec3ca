"""Which step records a restore adopts (processor/_engine/steps.py): only the latest committed
generation's, the first per (invocation, seq) — so a zombie's records never reach a replay."""

from __future__ import annotations

from processor._engine import steps
from processor._engine.core import Entry


def _run(seq: int, value: bytes) -> Entry:
    return Entry(seq=seq, kind="run", name="s", value=value)


def _logged(offset: int, gen: int, inv: str, seq: int, value: bytes) -> steps.Logged:
    return steps.Logged(offset=offset, gen=gen, invocation_id=inv, entry=_run(seq, value))


def test_records_round_trip_with_their_generation() -> None:
    entry = _run(3, b'"x"')
    assert steps.decode(steps.encode(7, entry)) == (7, entry)
    assert steps.decode_any(b"inv-a", steps.encode(7, entry)) == (7, [("inv-a", entry)])


def test_a_batch_record_holds_one_turns_steps_in_order() -> None:
    items = [("inv-a", _run(0, b"1")), ("inv-b", _run(4, b"[1, 2, 3]")), ("inv-a", _run(1, b""))]
    data = steps.encode_batch(9, [(inv, e.encode()) for inv, e in items])
    assert steps.decode_any(None, data) == (9, items)


def test_a_zombie_of_an_older_generation_and_an_owner_that_never_committed_are_both_dropped() -> None:
    records = [
        _logged(10, 4, "a", 0, b"owner"),         # the owner that committed generation 4
        _logged(11, 3, "a", 1, b"zombie"),        # its predecessor, still writing after losing the partition
        _logged(12, 4, "b", 0, b"owner"),
        _logged(13, 5, "b", 1, b"uncommitted"),   # a successor whose generation never committed
    ]
    got = steps.adopt(records, committed_gen=4, end=14)
    assert got.entries == {"a": [_run(0, b"owner")], "b": [_run(0, b"owner")]}
    assert got.end == 14 and len(got) == 2


def test_the_first_record_of_a_seq_wins_and_order_is_kept() -> None:
    records = [_logged(21, 2, "a", 1, b"second"), _logged(20, 2, "a", 0, b"first"),
               _logged(22, 2, "a", 1, b"again")]
    assert steps.adopt(records, committed_gen=2, end=23).entries == {"a": [_run(0, b"first"), _run(1, b"second")]}
