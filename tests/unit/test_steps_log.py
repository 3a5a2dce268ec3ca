"""Which step records a restore adopts (processor/_engine/steps.py): only the latest committed
generation's, the first per (invocation, seq, reads) — so a zombie's records never reach a replay."""

from __future__ import annotations

from processor._engine import steps
from processor._engine.core import Entry


def _run(seq: int, value: bytes) -> Entry:
    return Entry(seq=seq, kind="run", name="s", value=value)


def _logged(offset: int, gen: int, inv: str, seq: int, value: bytes, reads: bytes = b"") -> steps.Logged:
    return steps.Logged(offset=offset, gen=gen, invocation_id=inv, entry=_run(seq, value), reads=reads)


def _entries(s: steps.Salvage) -> dict[str, list[Entry]]:
    return {inv: [r.entry for r in rs] for inv, rs in s.entries.items()}


READ_1 = steps.fold_read(steps.NO_READS, 0, b"1")


def test_records_round_trip_with_their_generation_and_the_digest_of_what_was_read_before() -> None:
    entry = _run(3, b'"x"')
    assert steps.decode_any(b"inv-a", steps.encode(7, entry, READ_1)) == (7, [("inv-a", READ_1, entry)])


def test_a_batch_record_holds_one_turns_steps_in_order() -> None:
    items = [("inv-a", READ_1, _run(0, b"1")), ("inv-b", steps.NO_READS, _run(4, b"[1, 2, 3]")),
             ("inv-a", READ_1, _run(1, b""))]
    data = steps.encode_batch(9, [(inv, reads, e.encode()) for inv, reads, e in items])
    assert steps.decode_any(None, data) == (9, items)


def test_a_record_written_before_digests_is_taken_whatever_the_replay_read() -> None:
    entry = _run(3, b'"x"')
    old = bytes([0x53]) + (7).to_bytes(4, "big") + entry.encode()
    assert steps.decode_any(b"inv-a", old) == (7, [("inv-a", b"", entry)])
    assert _logged(0, 7, "inv-a", 3, b'"x"').fits(READ_1)


def test_the_digest_of_reads_tells_values_positions_and_absence_apart() -> None:
    digests = {steps.NO_READS, READ_1, steps.fold_read(steps.NO_READS, 0, b"2"),
               steps.fold_read(steps.NO_READS, 1, b"1"), steps.fold_read(steps.NO_READS, 0, None),
               steps.fold_read(steps.NO_READS, 0, b""), steps.fold_read(READ_1, 1, b"1")}
    assert len(digests) == 7
    assert _logged(0, 1, "a", 1, b"x", READ_1).fits(READ_1)
    assert not _logged(0, 1, "a", 1, b"x", READ_1).fits(steps.NO_READS)


def test_a_zombie_of_an_older_generation_and_an_owner_that_never_committed_are_both_dropped() -> None:
    records = [
        _logged(10, 4, "a", 0, b"owner"),         # the owner that committed generation 4
        _logged(11, 3, "a", 1, b"zombie"),        # its predecessor, still writing after losing the partition
        _logged(12, 4, "b", 0, b"owner"),
        _logged(13, 5, "b", 1, b"uncommitted"),   # a successor whose generation never committed
    ]
    got = steps.adopt(records, committed_gen=4, end=14)
    assert _entries(got) == {"a": [_run(0, b"owner")], "b": [_run(0, b"owner")]}
    assert got.end == 14 and len(got) == 2


def test_the_first_record_of_a_seq_wins_and_order_is_kept() -> None:
    records = [_logged(21, 2, "a", 1, b"second"), _logged(20, 2, "a", 0, b"first"),
               _logged(22, 2, "a", 1, b"again")]
    assert _entries(steps.adopt(records, committed_gen=2, end=23)) == {"a": [_run(0, b"first"), _run(1, b"second")]}


def test_records_of_one_step_after_different_reads_are_all_kept_for_the_replay_to_choose() -> None:
    other = steps.fold_read(steps.NO_READS, 0, b"2")
    records = [_logged(30, 2, "a", 1, b"after 1", READ_1), _logged(31, 2, "a", 1, b"after 2", other),
               _logged(32, 2, "a", 1, b"after 1 again", READ_1)]
    assert _entries(steps.adopt(records, committed_gen=2, end=33)) == {"a": [_run(1, b"after 1"), _run(1, b"after 2")]}
