"""An in-memory twin of :class:`state.store.PartitionStore` for fast unit tests and crash-point
exploration. It passes the same contract tests, key limits and scan snapshots included."""

from __future__ import annotations

import bisect
import inspect
import weakref
from collections.abc import Generator, Iterable, Iterator

from processor.state.keys import LOCAL
from processor.state.store import (
    FORMAT_KEY,
    FORMAT_VERSION,
    OFFSET_KEY,
    StoreClosedError,
    check_key,
    decode_offset,
    encode_offset,
    scan_bounds,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A dict plus a sorted key list. While a :meth:`scan` is outstanding, :meth:`apply` replaces
    both instead of mutating them, so the scan keeps reading the snapshot it started on, as an LMDB
    read transaction would; with no scan outstanding it updates them in place."""

    def __init__(self) -> None:
        """An empty store at changelog offset 0."""
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self._scans: weakref.WeakSet[Generator[tuple[bytes, bytes], None, None]] = weakref.WeakSet()
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._data = {FORMAT_KEY: FORMAT_VERSION.to_bytes(4, "big")}
        self._keys = [FORMAT_KEY]

    def _live(self) -> None:
        if self._closed:
            raise StoreClosedError("memory store is closed")

    def get(self, key: bytes) -> bytes | None:
        """The value under `key`, or None."""
        self._live()
        return self._data.get(key)

    def scan(self, prefix: bytes, *, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries with `prefix`, ascending from `start`, as of this call."""
        self._live()
        data, keys = self._data, self._keys
        lo, hi = scan_bounds(prefix, start)
        i = bisect.bisect_left(keys, lo)
        j = len(keys) if hi is None else bisect.bisect_left(keys, hi, lo=i)
        it = self._iterate(data, keys, i, j, skip_local=not prefix)
        self._scans.add(it)
        return it

    @staticmethod
    def _iterate(data: dict[bytes, bytes], keys: list[bytes], i: int, j: int, *,
                 skip_local: bool) -> Generator[tuple[bytes, bytes], None, None]:
        for n in range(i, j):
            k = keys[n]
            if skip_local and k[:1] == LOCAL:
                continue
            yield k, data[k]

    def changelog_offset(self) -> int:
        """The next changelog offset this store has not applied; 0 for a fresh store."""
        self._live()
        return decode_offset(self._data.get(OFFSET_KEY))

    def sync(self) -> None:
        """Nothing to flush."""
        self._live()

    def apply(self, writes: Iterable[tuple[bytes, bytes | None]], changelog_offset: int) -> None:
        """Put/delete each in order and record `changelog_offset`; nothing changes on error."""
        self._live()
        offset = encode_offset(changelog_offset)
        final: dict[bytes, bytes | None] = {}  # coalesced first, so a bad key changes nothing
        for key, value in writes:
            check_key(key)
            final[key] = value
        final[OFFSET_KEY] = offset
        if any(inspect.getgeneratorstate(g) != inspect.GEN_CLOSED for g in self._scans):  # still read
            self._data, self._keys = dict(self._data), list(self._keys)
            self._scans = weakref.WeakSet()
        data, keys = self._data, self._keys
        gone = [k for k, v in final.items() if v is None and k in data]
        added = sorted(k for k, v in final.items() if v is not None and k not in data)
        for k, v in final.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        if gone:
            _remove_sorted(keys, sorted(gone))
        if added:
            _insert_sorted(keys, added)

    def clear(self) -> None:
        """Delete everything; the changelog offset goes back to 0."""
        self._live()
        self._reset()

    def count(self, prefix: bytes = b"") -> int:
        """How many keys start with `prefix` (empty prefix: all but ``LOCAL``)."""
        self._live()
        if not prefix:
            return len(self._keys) - self.count(LOCAL)
        lo, hi = scan_bounds(prefix, None)
        i = bisect.bisect_left(self._keys, lo)
        j = len(self._keys) if hi is None else bisect.bisect_left(self._keys, hi, lo=i)
        return j - i

    def close(self) -> None:
        """Later calls raise :class:`StoreClosedError`; idempotent."""
        self._closed = True

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._data)} keys, offset {decode_offset(self._data.get(OFFSET_KEY))})"


_MAX_RUNS = 32  # beyond this many separate runs, one linear rebuild beats a memmove per run


def _remove_sorted(keys: list[bytes], gone: list[bytes]) -> None:
    """Remove sorted `gone` (all present) from sorted `keys`, one slice delete per contiguous run."""
    runs: list[list[int]] = []
    for k in gone:
        i = bisect.bisect_left(keys, k)
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    if len(runs) > _MAX_RUNS:
        dropped = set(gone)
        keys[:] = [k for k in keys if k not in dropped]
        return
    for a, b in reversed(runs):
        del keys[a:b]


def _insert_sorted(keys: list[bytes], added: list[bytes]) -> None:
    """Insert sorted `added` (all absent) into sorted `keys`, one slice insert per position."""
    runs: list[tuple[int, list[bytes]]] = []
    for k in added:
        i = bisect.bisect_left(keys, k)
        if runs and runs[-1][0] == i:
            runs[-1][1].append(k)
        else:
            runs.append((i, [k]))
    if len(runs) > _MAX_RUNS:
        keys.extend(added)
        keys.sort()  # two sorted runs: timsort merges them in linear time
        return
    for i, group in reversed(runs):
        keys[i:i] = group
