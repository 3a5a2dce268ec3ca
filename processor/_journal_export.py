"""Exported journals: one JSON object per line, what ``processor journal --export`` writes and
``processor.testing.replay`` reads.

Each line holds one invocation: its row and journal entries byte for byte (base64 of their Avro
encoding, so values of any serde survive), beside a readable copy (``target``, ``status``,
``entries``) for people reading the file. Only the exact fields are read back.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from processor._engine.core import Entry
from processor._engine.records import InvocationRow, Status
from processor._errors import ConfigurationError
from processor._inspect import entry_dict

FORMAT = 1
IN_FLIGHT = frozenset({Status.RUNNING, Status.SUSPENDED, Status.BACKING_OFF, Status.PAUSED})  # what a deploy resumes


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedJournal:
    """One exported invocation: its partition, row and journal (entries in seq order)."""

    partition: int
    row: InvocationRow
    entries: list[Entry]


def export_line(partition: int, row: InvocationRow, entries: Iterable[Entry]) -> bytes:
    """One line of an export file (without the newline)."""
    entries = list(entries)
    return orjson.dumps({
        "format": FORMAT, "partition": partition, "id": row.id, "target": row.target, "key": row.key,
        "status": row.status.value, "row": _b64(row.encode()), "journal": [_b64(e.encode()) for e in entries],
        "entries": [entry_dict(e) for e in entries]})


def exact(row: InvocationRow, entries: Iterable[Entry]) -> dict[str, Any]:
    """The byte-exact part of an invocation's answer (``/api/invocations/<id>?exact=1``)."""
    return {"row": _b64(row.encode()), "journal": [_b64(e.encode()) for e in entries]}


def line_from_exact(partition: int, d: dict[str, Any]) -> bytes:
    """An export line from an answer's ``exact`` part."""
    entries = [Entry.decode(_unb64(e)) for e in d["journal"]]
    return export_line(partition, InvocationRow.decode(_unb64(d["row"])), entries)


def read_lines(lines: Iterable[str | bytes]) -> Iterator[ExportedJournal]:
    """The invocations of an export file's lines (blank lines skipped). ConfigurationError names the
    line that is not an exported journal."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d: Any = orjson.loads(line)
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {FORMAT}")
            yield ExportedJournal(partition=int(d["partition"]), row=InvocationRow.decode(_unb64(d["row"])),
                                  entries=[Entry.decode(_unb64(e)) for e in d["journal"]])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigurationError(f"line {n} is not an exported journal: {e}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
