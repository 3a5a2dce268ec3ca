"""The durable per-partition store: one LMDB environment per owned partition (docs/architecture.md, "Partitions").

The store only ever holds committed data. Writes arrive in batches through :meth:`Store.apply`,
each batch in one write transaction together with the changelog offset it brings the store up to,
so the store and its offset can never disagree after a crash.

Errors::

    StoreError                  root of this module's errors
    ├── StoreFormatError        the files were written by an unknown (future) format
    └── StoreClosedError        the store was used after close()
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import lmdb

from processor.state.keys import LOCAL, MAX_KEY_SIZE, KeyTooLongError, local_key, prefix_end

__all__ = [
    "FORMAT_VERSION",
    "PartitionStore",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreFormatError",
]

FORMAT_VERSION = 1
"""On-disk layout version written into every new store under ``local_key("format")``."""

OFFSET_KEY = local_key("changelog-offset")
FORMAT_KEY = local_key("format")
APPLY_CHUNK = 1000  # writes per LMDB write transaction of an apply (``PartitionStore.apply``)
_U64 = struct.Struct(">Q")


class StoreError(Exception):
    """Root of the store's errors."""


class StoreFormatError(StoreError):
    """The store on disk has a format this code cannot read."""


class StoreClosedError(StoreError):
    """The store was used after :meth:`Store.close`."""


class Store(Protocol):
    """What the state layer needs from a backend; :class:`PartitionStore` (LMDB) and
    :class:`state.memory.MemoryStore` both satisfy it and pass the same contract tests.

    ``scan`` and ``count`` with an empty prefix leave out the ``LOCAL`` namespace (the store's own
    bookkeeping); ask for ``LOCAL`` explicitly to see it.
    """

    def get(self, key: bytes) -> bytes | None:
        """The value under `key`, or None."""
        ...

    def scan(self, prefix: bytes, *, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose key starts with `prefix`, ascending, from `start` (inclusive) if given,
        as of the moment of the call."""
        ...

    def changelog_offset(self) -> int:
        """The next changelog offset this store has not applied yet; 0 for a fresh store."""
        ...

    def sync(self) -> None:
        """Force applied writes to disk (a no-op where there is no disk)."""
        ...

    def apply(self, writes: Iterable[tuple[bytes, bytes | None]], changelog_offset: int) -> None:
        """Put (value) or delete (None) each key in order and record `changelog_offset`, all or
        nothing."""
        ...

    def clear(self) -> None:
        """Delete everything; the changelog offset goes back to 0."""
        ...

    def count(self, prefix: bytes = b"") -> int:
        """How many keys start with `prefix`."""
        ...

    def close(self) -> None:
        """Release the backend; later calls raise :class:`StoreClosedError`."""
        ...


def encode_offset(offset: int) -> bytes:
    """The stored form of a changelog offset."""
    if offset < 0:
        raise ValueError(f"changelog offset must be >= 0, got {offset}")
    return _U64.pack(offset)


def decode_offset(raw: bytes | None) -> int:
    """Inverse of :func:`encode_offset`; 0 when nothing is stored."""
    return 0 if raw is None else int(_U64.unpack(raw)[0])


def check_key(key: bytes) -> None:
    """Refuse keys LMDB cannot hold, identically in every backend."""
    if not key:
        raise ValueError("empty keys are not allowed")
    if len(key) > MAX_KEY_SIZE:
        raise KeyTooLongError(f"key of {len(key)} bytes exceeds the store's limit of {MAX_KEY_SIZE}")


def check_format(raw: bytes | None, where: str) -> None:
    """Raise :class:`StoreFormatError` unless `raw` is a format this code reads."""
    if raw is None:
        return
    version = int.from_bytes(raw, "big")
    if version > FORMAT_VERSION:
        raise StoreFormatError(f"{where} has store format {version}; this code reads formats up to "
                               f"{FORMAT_VERSION}. Upgrade, or delete the directory to restore from "
                               "the changelog.")


def scan_bounds(prefix: bytes, start: bytes | None) -> tuple[bytes, bytes | None]:
    """First key to visit and the exclusive end key (None = no end) of a prefix scan."""
    lo = prefix if start is None or start < prefix else start
    return lo, prefix_end(prefix)


class PartitionStore:
    """One LMDB environment (one unnamed database) holding one partition's committed state."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        """Use :meth:`open`."""
        self._env = env
        self._path = path
        self._closed = False

    @classmethod
    def open(cls, path: Path, *, map_size: int = 1 << 34, durable: bool = False,
             readonly: bool = False) -> PartitionStore:
        """Open or create the store in directory `path` (created with its parents). `map_size` is
        address space reserved, not disk used. Open a path at most once per process: LMDB does not
        allow two environments on the same files in one process.

        `durable=False` (the default) skips the fsync of each apply: the changelog, not this file, is
        the durable copy, and a store that lost its newest applies simply replays the changelog
        tail. Call `sync()` to flush. See docs/decisions/001-lmdb-without-fsync.md.

        `readonly=True` opens an existing store for reading, safe next to a live writer in another
        process (introspection)."""
        if readonly:
            env = lmdb.open(str(path), readonly=True, lock=True, subdir=True, max_dbs=0)
            check_format(env.begin().get(FORMAT_KEY), f"store {path}")
            return cls(env, path)
        path.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(path), map_size=map_size, subdir=True, max_dbs=0, sync=durable,
                        metasync=durable, meminit=False, readahead=False)
        try:
            with env.begin(write=True) as txn:
                raw = txn.get(FORMAT_KEY)
                check_format(raw, f"store {path}")
                if raw is None:
                    txn.put(FORMAT_KEY, FORMAT_VERSION.to_bytes(4, "big"))
        except BaseException:
            env.close()
            raise
        return cls(env, path)

    @property
    def path(self) -> Path:
        """The directory holding the LMDB files."""
        return self._path

    def _live(self) -> lmdb.Environment:
        if self._closed:
            raise StoreClosedError(f"store {self._path} is closed")
        return self._env

    def get(self, key: bytes) -> bytes | None:
        """The value under `key`, or None."""
        with self._live().begin(buffers=False) as txn:
            value = txn.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes, *, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries with `prefix`, ascending from `start`; one read transaction, opened now and held
        until the iterator is exhausted or closed."""
        txn = self._live().begin(buffers=False)
        return self._iterate(txn, prefix, start)

    @staticmethod
    def _iterate(txn: lmdb.Transaction, prefix: bytes,
                 start: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        try:
            lo, hi = scan_bounds(prefix, start)
            skip_local = not prefix
            cur = txn.cursor()
            if not cur.set_range(lo):
                return
            for raw_k, raw_v in cur.iternext(keys=True, values=True):
                k = bytes(raw_k)  # already bytes (buffers=False): no copy, just the type
                if hi is not None and k >= hi:
                    return
                if skip_local and k[:1] == LOCAL:
                    continue
                yield k, bytes(raw_v)
        finally:
            txn.abort()

    def changelog_offset(self) -> int:
        """The next changelog offset this store has not applied; 0 for a fresh store."""
        return decode_offset(self.get(OFFSET_KEY))

    def sync(self) -> None:
        """fsync what was applied so far."""
        self._live().sync(True)

    def apply(self, writes: Iterable[tuple[bytes, bytes | None]], changelog_offset: int) -> None:
        """Put/delete each in order, then record `changelog_offset` — in write transactions of at
        most ``APPLY_CHUNK`` writes, the offset in the last. LMDB keeps every page a transaction
        dirtied on a free list of its own until the environment closes, so one transaction of a
        big cycle would hold its size in memory for good (24 MB after one of 50,000 puts). A crash
        between the transactions leaves the old offset: the restore applies the changelog from it
        again, rewriting the same values. Readers never see a half-applied cycle: the sealed
        overlay that holds it covers the store until the apply returns."""
        offset = encode_offset(changelog_offset)
        env = self._live()
        writes = list(writes)
        for key, _ in writes:  # a key LMDB would refuse refuses the whole apply, before any write
            check_key(key)
        it = iter(writes)
        while True:
            with env.begin(write=True) as txn:
                more = self._apply_chunk(txn, it)
                if not more:
                    txn.put(OFFSET_KEY, offset)
                    return

    @staticmethod
    def _apply_chunk(txn: lmdb.Transaction, writes: Iterator[tuple[bytes, bytes | None]]) -> bool:
        """Up to APPLY_CHUNK of `writes` in `txn`; whether any are left."""
        cur = txn.cursor()
        run: list[tuple[bytes, bytes]] = []  # consecutive puts go through putmulti in one call
        n = 0
        for key, value in writes:
            if value is None:
                if run:
                    cur.putmulti(run)
                    run = []
                txn.delete(key)
            else:
                run.append((key, value))
            n += 1
            if n >= APPLY_CHUNK:
                break
        if run:
            cur.putmulti(run)
        return n >= APPLY_CHUNK

    def clear(self) -> None:
        """Delete every key (data and offset); keep the format marker."""
        with self._live().begin(write=True) as txn:
            txn.drop(self._env.open_db(None, txn=txn), delete=False)
            txn.put(FORMAT_KEY, FORMAT_VERSION.to_bytes(4, "big"))

    def count(self, prefix: bytes = b"") -> int:
        """How many keys start with `prefix` (empty prefix: all but ``LOCAL``)."""
        env = self._live()
        if not prefix:
            return int(env.stat()["entries"]) - self.count(LOCAL)
        n = 0
        for _ in self._iterate(env.begin(buffers=False), prefix, None):
            n += 1
        return n

    def close(self) -> None:
        """Close the environment; idempotent."""
        if not self._closed:
            self._closed = True
            self._env.close()

    def __repr__(self) -> str:
        return f"PartitionStore({str(self._path)!r})"
