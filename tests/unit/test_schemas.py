from __future__ import annotations

import pytest

from processor import schemas
from processor.schemas._codec import encode_as

INVOCATION = {
    "id": "inv-1", "service": "order", "handler": "place", "key": "o-1", "status": "running",
    "input": b"{}", "created_ms": 1, "failure": {"type": "ValueError", "message": "boom"},
}


def test_round_trip_carries_the_version_byte() -> None:
    data = schemas.encode("Invocation", {**INVOCATION, "input_headers": {"h": b"v"}})
    assert data[0] == schemas.CURRENT_VERSIONS["Invocation"]
    back = schemas.decode("Invocation", data)
    assert back["input_headers"] == {"h": b"v"}
    assert back["failure"] == {"type": "ValueError", "message": "boom"}
    assert back["retry_at_ms"] is None


def test_a_record_written_by_schema_version_1_is_read_with_defaults() -> None:
    old = encode_as("Invocation", 1, INVOCATION)
    assert old[0] == 1
    back = schemas.decode("Invocation", old)
    assert back["id"] == "inv-1"
    assert back["input_headers"] == {}


def test_unknown_versions_and_garbage_fail_with_schema_error() -> None:
    with pytest.raises(schemas.SchemaError, match="version 9"):
        schemas.decode("Invocation", b"\x09abc")
    with pytest.raises(schemas.SchemaError):
        schemas.decode("JournalEntry", b"\x01\xff")
    with pytest.raises(schemas.SchemaError):
        schemas.encode("JournalEntry", {"seq": "not-an-int"})
    with pytest.raises(schemas.SchemaError, match="unknown record type"):
        schemas.encode("Nope", {})


@pytest.mark.parametrize("value", [None, b"", b"x" * 300])
@pytest.mark.parametrize("failure", [None, ("TerminalError", "caf\u00e9 " * 40)])
@pytest.mark.parametrize("numbers", [(0, 1, None, None), (63, 64, 1_795_980_371_547, -1),
                                     (70_000, 2**31 - 1, 0, 2**62)])
@pytest.mark.parametrize("pending", [False, True])
@pytest.mark.parametrize("times", [(None, None), (1_795_980_371_547, None), (1_795_980_371_547, 1_795_980_371_600)])
def test_the_hand_written_journal_entry_encoder_writes_what_the_schema_writes(
        value: bytes | None, failure: tuple[str, str] | None, numbers: tuple[int, int, int | None, int | None],
        pending: bool, times: tuple[int | None, int | None]) -> None:
    seq, attempts, retry_at_ms, due_ms = numbers
    started_ms, ended_ms = times
    record = {"seq": seq, "kind": "run", "name": "n\u00e4me", "value": value,
              "failure": None if failure is None else {"type": failure[0], "message": failure[1]},
              "attempts": attempts, "retry_at_ms": retry_at_ms, "pending": pending, "due_ms": due_ms,
              "started_ms": started_ms, "ended_ms": ended_ms}
    fast = schemas.encode_journal_entry(seq, "run", "n\u00e4me", value, failure, attempts, retry_at_ms,
                                        pending, due_ms, started_ms, ended_ms)
    assert fast == schemas.encode("JournalEntry", record)
    assert schemas.decode("JournalEntry", fast) == record
