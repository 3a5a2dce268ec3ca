"""Journal entries carry when they began and ended, so `processor journal` and the web UI show each
step's and wait's duration; a wait completed out of memory keeps the start its pending entry had."""

from __future__ import annotations

from processor._cluster import render
from processor._engine.core import Entry, EntryKind, decode_journal, encode_chunk
from processor._inspect import entry_dict


def test_a_completion_keeps_the_start_of_the_pending_wait_it_completes() -> None:
    pending = Entry(seq=2, kind=EntryKind.SLEEP, name="sleep", pending=True, due_ms=9_000, started_ms=1_000)
    done = Entry(seq=2, kind=EntryKind.SLEEP, name="sleep", ended_ms=9_005)  # as a fired timer writes it
    (merged,) = decode_journal([encode_chunk([pending]), encode_chunk([done])])
    assert (merged.started_ms, merged.ended_ms, merged.completed) == (1_000, 9_005, True)


def test_the_journal_shows_when_each_entry_began_and_how_long_it_took() -> None:
    step = Entry(seq=0, kind=EntryKind.RUN, name="charge", value=b'"pay_1"', attempts=2,
                 started_ms=1_795_980_000_000, ended_ms=1_795_980_001_500)
    old = Entry(seq=1, kind=EntryKind.SET, name="status")  # journaled before entries had times
    d, o = entry_dict(step), entry_dict(old)
    assert (d["started"], d["ended"], d["took_ms"]) == ("2026-11-29 19:20:00", "2026-11-29 19:20:01", 1_500)
    assert (o["started"], o["took_ms"]) == (None, None)
    text = render.journal({"id": "inv-1", "target": "svc/h", "status": "completed", "partition": 0,
                           "journal": [d, o]})
    assert "#0    19:20:00  run" in text and "took 1.5 s" in text
    assert "#1    set" in text
