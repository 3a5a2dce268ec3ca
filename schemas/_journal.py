"""A hand-written Avro encoder for ``JournalEntry``, the record written once per step (steps log)
and per journaled action (journal chunks). fastavro's generic writer costs several microseconds per
record, most of it walking the schema; this writes the same bytes (the unit tests compare the two
on every field combination) for the current version only."""

from __future__ import annotations

_VERSION = 3  # CURRENT_VERSIONS["JournalEntry"] (tests/unit/test_schemas.py holds them equal)


def _zigzag(n: int) -> bytes:
    """Avro's int/long: zigzag, then a little-endian base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_zigzag(i) for i in range(1024)]


def _long(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 1024 else _zigzag(n)


def _text(s: str) -> bytes:
    raw = s.encode()
    return _long(len(raw)) + raw


_HEAD = bytes((_VERSION,))
_NULL = b"\x00"     # union branch 0 (null)
_SECOND = b"\x02"   # union branch 1


def encode_journal_entry(seq: int, kind: str, name: str, value: bytes | None,
                         failure: tuple[str, str] | None, attempts: int, retry_at_ms: int | None,
                         pending: bool, due_ms: int | None, started_ms: int | None = None,
                         ended_ms: int | None = None) -> bytes:
    """The bytes ``schemas.encode("JournalEntry", ...)`` writes for these fields."""
    parts = [_HEAD, _long(seq), _text(kind), _text(name)]
    if value is None:
        parts.append(_NULL)
    else:
        parts += (_SECOND, _long(len(value)), value)
    if failure is None:
        parts.append(_NULL)
    else:
        parts += (_SECOND, _text(failure[0]), _text(failure[1]))
    parts.append(_long(attempts))
    parts.append(_NULL if retry_at_ms is None else _SECOND + _long(retry_at_ms))
    parts.append(b"\x01" if pending else b"\x00")
    parts.append(_NULL if due_ms is None else _SECOND + _long(due_ms))
    parts.append(_NULL if started_ms is None else _SECOND + _long(started_ms))
    parts.append(_NULL if ended_ms is None else _SECOND + _long(ended_ms))
    return b"".join(parts)
