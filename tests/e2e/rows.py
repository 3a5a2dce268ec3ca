"""Reading engine rows (invocations, journals) from the partition stores a processor left — or is
still writing: LMDB is opened read-only, which is safe next to a live writer in another process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from processor import _inspect
from processor._engine.core import Entry, decode_journal
from processor._engine.records import InvocationRow
from processor.state import keys


def _scan(state_dir: Path, app: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    if not (state_dir / app).exists():
        return
    for _, store in _inspect._stores(state_dir, app):  # read-only, as `processor invocations` reads them
        yield from store.scan(prefix)


def invocations(state_dir: Path, app: str) -> list[InvocationRow]:
    """Every invocation row in every partition store of `app`."""
    return [InvocationRow.decode(v) for _, v in _scan(state_dir, app, keys.INVOCATION)]


def journal(state_dir: Path, app: str, invocation_id: str) -> list[Entry]:
    """The journal entries of one invocation, in seq order."""
    return decode_journal(v for _, v in _scan(state_dir, app, keys.journal_prefix(invocation_id)))


def journal_rows(state_dir: Path, app: str) -> int:
    """How many journal rows all stores of `app` hold."""
    return sum(1 for _ in _scan(state_dir, app, keys.JOURNAL))
