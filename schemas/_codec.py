"""Avro (fastavro, schemaless) encoding behind a one-byte format version.

Every record is ``bytes([version]) + avro_body``. The current schema of ``Name`` lives in
``schemas/<snake_name>.avsc``; older versions stay readable from ``schemas/history/<snake>.v<N>.avsc``
and are resolved to the current schema with Avro's schema-resolution rules (new fields need defaults).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

_DIR = Path(__file__).resolve().parent

#: Current format version of each record type; bump it (and keep the old .avsc in history/) on change.
CURRENT_VERSIONS: Mapping[str, int] = {
    "Invocation": 3,
    "JournalEntry": 3,
    "Timer": 2,
    "InboxCommand": 3,
    "InvocationResult": 1,
}

_FILES = {
    "Invocation": "invocation",
    "JournalEntry": "journal_entry",
    "Timer": "timer",
    "InboxCommand": "inbox_command",
    "InvocationResult": "invocation_result",
}
_SHARED = ("failure",)


class SchemaError(ValueError):
    """A record could not be encoded or decoded with the known schemas."""


def _parse(path: Path) -> Any:
    named: dict[str, Any] = {}
    for shared in _SHARED:
        fastavro.parse_schema(json.loads((_DIR / f"{shared}.avsc").read_text()), named_schemas=named)
    return fastavro.parse_schema(json.loads(path.read_text()), named_schemas=named)


@cache
def _schema(name: str, version: int) -> Any:
    if name not in CURRENT_VERSIONS:
        raise SchemaError(f"unknown record type {name!r}")
    if version == CURRENT_VERSIONS[name]:
        return _parse(_DIR / f"{_FILES[name]}.avsc")
    path = _DIR / "history" / f"{_FILES[name]}.v{version}.avsc"
    if not 0 < version < CURRENT_VERSIONS[name] or not path.exists():
        raise SchemaError(f"{name} format version {version} is unknown to this build "
                          f"(current is {CURRENT_VERSIONS[name]})")
    return _parse(path)


def encode(name: str, record: Mapping[str, Any]) -> bytes:
    """Encode `record` with the current schema of `name`, prefixed by its version byte."""
    version = CURRENT_VERSIONS.get(name)
    if version is None:
        raise SchemaError(f"unknown record type {name!r}")
    out = io.BytesIO()
    out.write(bytes((version,)))
    try:
        fastavro.schemaless_writer(out, _schema(name, version), record)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise SchemaError(f"cannot encode {name}: {e}") from e
    return out.getvalue()


def encode_as(name: str, version: int, record: Mapping[str, Any]) -> bytes:
    """Encode with an older version's schema (for compatibility tests of old writers)."""
    out = io.BytesIO()
    out.write(bytes((version,)))
    fastavro.schemaless_writer(out, _schema(name, version), record)
    return out.getvalue()


def decode(name: str, data: bytes) -> dict[str, Any]:
    """Decode bytes written by any known version of `name` into the current schema's shape."""
    if not data:
        raise SchemaError(f"empty {name} record")
    version = data[0]
    current = CURRENT_VERSIONS.get(name)
    if current is None:
        raise SchemaError(f"unknown record type {name!r}")
    writer = _schema(name, version)
    buf = io.BytesIO(data)
    buf.seek(1)
    try:
        if version == current:
            rec = fastavro.schemaless_reader(buf, writer, None)
        else:
            rec = fastavro.schemaless_reader(buf, writer, _schema(name, current))
    except (ValueError, TypeError, EOFError, IndexError, KeyError, StopIteration) as e:
        raise SchemaError(f"cannot decode {name} v{version}: {e}") from e
    if not isinstance(rec, dict):
        raise SchemaError(f"{name} v{version} decoded to {type(rec).__name__}, not a record")
    return rec
