"""Reading engine rows (invocations, journals) from the partition stores a processor left — or is
still writing: LMDB is opened read-only, which is safe next to a live writer in another process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lmdb

from processor._engine.core import Entry
from processor._engine.records import InvocationRow
from state import keys


def _scan(state_dir: Path, app: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    root = state_dir / app
    if not root.exists():
        return
    for part in sorted(d for d in root.iterdir() if d.is_dir() and (d / "data.mdb").exists()):
        env = lmdb.open(str(part), readonly=True, lock=True, subdir=True, max_dbs=0)
        try:
            with env.begin(buffers=False) as txn:
                cur = txn.cursor()
                if not cur.set_range(prefix):
                    continue
                for k, v in cur.iternext():
                    if not bytes(k).startswith(prefix):
                        break
                    yield bytes(k), bytes(v)
        finally:
            env.close()


def invocations(state_dir: Path, app: str) -> list[InvocationRow]:
    """Every invocation row in every partition store of `app`."""
    return [InvocationRow.decode(v) for _, v in _scan(state_dir, app, keys.INVOCATION)]


def journal(state_dir: Path, app: str, invocation_id: str) -> list[Entry]:
    """The journal entries of one invocation, in seq order."""
    return [Entry.decode(v) for _, v in _scan(state_dir, app, keys.journal_prefix(invocation_id))]


def journal_rows(state_dir: Path, app: str) -> int:
    """How many journal rows all stores of `app` hold."""
    return sum(1 for _ in _scan(state_dir, app, keys.JOURNAL))
