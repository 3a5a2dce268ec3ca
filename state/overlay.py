"""Uncommitted writes in memory, layered over the committed store (docs/architecture.md, "The commit cycle").

A commit cycle writes into the *open* overlay. :meth:`PartitionState.seal` turns it into a
*sealed* overlay while its Kafka transaction commits and opens a fresh one for the next cycle;
:meth:`PartitionState.applied` writes the sealed overlay into the store once the transaction has
committed. Reads look newest first: open overlay, sealed overlays newest to oldest, then the store.
So the store never holds uncommitted data and the engine always reads its own writes.
"""

from __future__ import annotations

import bisect
import enum
import heapq
from collections.abc import Iterable, Iterator

from processor.state.store import Store, check_key, scan_bounds

__all__ = ["MISSING", "Missing", "Overlay", "OverlayError", "PartitionState"]


class Missing(enum.Enum):
    """Type of :data:`MISSING`, the "not written in this overlay" answer of :meth:`Overlay.lookup`."""

    MISSING = enum.auto()


MISSING = Missing.MISSING


class OverlayError(RuntimeError):
    """An overlay was used out of order: written after sealing, or applied out of seal order."""


class Overlay:
    """One commit cycle's writes: insertion-ordered, last write per key wins, None = deleted."""

    __slots__ = ("_data", "_new", "_sealed", "_sorted")

    def __init__(self) -> None:
        """An empty, open overlay."""
        self._data: dict[bytes, bytes | None] = {}
        # Per namespace (first key byte): keys known sorted, and keys added since. A scan sorts only
        # its own namespace, so scanning a small namespace (subscribers, inboxes) while another one
        # grows (journals, state) costs nothing like a sort of the whole cycle.
        self._sorted: dict[bytes, list[bytes]] = {}
        self._new: dict[bytes, list[bytes]] = {}
        self._sealed = False

    @property
    def sealed(self) -> bool:
        """True once the overlay has been sealed for commit; it no longer accepts writes."""
        return self._sealed

    def put(self, key: bytes, value: bytes) -> None:
        """Record `value` under `key`."""
        self._write(key, value)

    def delete(self, key: bytes) -> None:
        """Record a delete of `key`."""
        self._write(key, None)

    def _write(self, key: bytes, value: bytes | None) -> None:
        if self._sealed:
            raise OverlayError("write to a sealed overlay; writes go to the open overlay")
        # Reject bad keys now: failing in store.apply would be after the Kafka commit.
        check_key(key)
        if key not in self._data:
            ns = key[:1]
            new = self._new.get(ns)
            if new is None:
                self._new[ns] = [key]
            else:
                new.append(key)
        self._data[key] = value

    def lookup(self, key: bytes) -> bytes | Missing | None:
        """The value written here, None if deleted here, :data:`MISSING` if not touched here."""
        return self._data.get(key, MISSING)

    def items(self) -> Iterable[tuple[bytes, bytes | None]]:
        """Every touched key once, with its last write, in first-write order."""
        return self._data.items()

    def __len__(self) -> int:
        return len(self._data)

    def keys_in(self, prefix: bytes, start: bytes | None = None) -> list[bytes]:
        """Sorted touched keys with `prefix`, from `start` (inclusive) if given."""
        if prefix:
            keys = self._namespace(prefix[:1])
        else:
            keys = sorted(k for ns in {*self._new, *self._sorted} for k in self._namespace(ns))
        lo, hi = scan_bounds(prefix, start)
        i = bisect.bisect_left(keys, lo)
        j = len(keys) if hi is None else bisect.bisect_left(keys, hi, lo=i)
        return keys[i:j]

    def _namespace(self, ns: bytes) -> list[bytes]:
        keys = self._sorted.setdefault(ns, [])
        new = self._new.pop(ns, None)
        if new:
            keys.extend(new)
            keys.sort()  # a sorted run plus a short tail: cheap for timsort
        return keys

    def _seal(self) -> None:
        self._sealed = True

    def __repr__(self) -> str:
        return f"Overlay({len(self._data)} keys{', sealed' if self._sealed else ''})"


CACHE_MAX = 65_536
"""Store values a :class:`PartitionState` keeps after reading them (then it starts over) ..."""
CACHE_BYTES = 8 * 1024 * 1024
"""... or as many as hold this many bytes of keys and values."""


class PartitionState:
    """One partition's state as the engine sees it: overlays over a :class:`state.store.Store`.

    Values read from the store are cached (at most ``CACHE_MAX`` or ``CACHE_BYTES``): every LMDB read
    releases the GIL,
    and on a loop sharing it with the Kafka clients' threads getting it back can take milliseconds.
    The store only changes by sealed overlays of this state, so the cache follows them
    (``applied``/``forget``); it never holds an uncommitted value.
    """

    def __init__(self, store: Store) -> None:
        """Layer an empty open overlay over `store`."""
        self.store = store
        self._open = Overlay()
        self._sealed: list[Overlay] = []  # oldest first
        self._cache: dict[bytes, bytes | None] = {}
        self._cache_bytes = 0

    def put(self, key: bytes, value: bytes) -> None:
        """Write into the open overlay."""
        self._open.put(key, value)

    def delete(self, key: bytes) -> None:
        """Delete in the open overlay."""
        self._open.delete(key)

    def get(self, key: bytes) -> bytes | None:
        """The newest value of `key` across all layers, or None."""
        value = self._open.lookup(key)
        if value is not MISSING:
            return value
        for layer in reversed(self._sealed):
            value = layer.lookup(key)
            if value is not MISSING:
                return value
        cache = self._cache
        try:
            return cache[key]
        except KeyError:
            pass
        value = self.store.get(key)
        if len(cache) >= CACHE_MAX or self._cache_bytes >= CACHE_BYTES:
            cache.clear()
            self._cache_bytes = 0
        cache[key] = value
        self._cache_bytes += len(key) + (len(value) if value else 0)
        return value

    def scan(self, prefix: bytes, *, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries with `prefix` across all layers, ascending from `start`, deletes hidden. The set
        of keys is fixed at the call; writes made while iterating may or may not be seen."""
        layers = [self._open, *reversed(self._sealed)]
        keyed = [(layer, keys) for layer in layers if len(layer) and (keys := layer.keys_in(prefix, start))]
        below = self.store.scan(prefix, start=start)
        if not keyed:
            return below
        return _merge(keyed, below)

    def dirty(self) -> bool:
        """Whether the open overlay holds writes."""
        return len(self._open) > 0

    def open_writes(self) -> int:
        """How many keys the open overlay holds."""
        return len(self._open)

    def sealed(self) -> int:
        """How many sealed overlays are waiting for :meth:`applied`."""
        return len(self._sealed)

    def seal(self) -> Overlay:
        """Freeze the open overlay for commit and open a new one; returns the sealed overlay."""
        layer = self._open
        layer._seal()
        self._sealed.append(layer)
        self._open = Overlay()
        return layer

    def applied(self, sealed: Overlay, changelog_offset: int) -> None:
        """After `sealed`'s Kafka transaction committed: write it into the store with the changelog
        offset it brings the store to, then drop the layer. `sealed` must be the oldest one."""
        if not self._sealed or self._sealed[0] is not sealed:
            raise OverlayError("applied() must be given the oldest sealed overlay of this partition")
        self.store.apply(sealed.items(), changelog_offset)
        self._sealed.pop(0)
        self._follow(sealed)

    def forget(self, sealed: Overlay) -> None:
        """Drop the oldest sealed layer after the caller applied its writes to the store itself
        (e.g. from the commit thread, so the event loop never waits on LMDB)."""
        if not self._sealed or self._sealed[0] is not sealed:
            raise OverlayError("forget() must be given the oldest sealed overlay of this partition")
        self._sealed.pop(0)
        self._follow(sealed)

    def _follow(self, applied: Overlay) -> None:
        """The store took `applied`'s writes: cached values of its keys change with them."""
        cache = self._cache
        if not cache:
            return
        changed = [k for k, _ in applied.items() if k in cache] if len(applied) < len(cache) else \
            list(cache.keys() & applied._data.keys())
        for k in changed:
            old, new = cache[k], applied._data[k]
            self._cache_bytes += (len(new) if new else 0) - (len(old) if old else 0)
            cache[k] = new

    def discard(self) -> None:
        """Abort: forget every overlay, open and sealed; reads fall back to the store."""
        self._open = Overlay()
        self._sealed.clear()


def _merge(keyed: list[tuple[Overlay, list[bytes]]],
           below: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """Merge sorted layers; for a key in several layers the lowest rank (newest layer) wins."""
    store_rank = len(keyed)

    def overlay_stream(rank: int, keys: list[bytes]) -> Iterator[tuple[bytes, int, bytes | None]]:
        for k in keys:
            yield k, rank, None

    def store_stream() -> Iterator[tuple[bytes, int, bytes | None]]:
        for k, v in below:
            yield k, store_rank, v

    # (key, rank) is unique across streams, so the value slot is never compared.
    streams = [overlay_stream(rank, keys) for rank, (_, keys) in enumerate(keyed)]
    streams.append(store_stream())
    last: bytes | None = None
    try:
        for k, rank, v in heapq.merge(*streams):
            if k == last:
                continue
            last = k
            value = v if rank == store_rank else keyed[rank][0].lookup(k)
            if value is None or value is MISSING:
                continue
            yield k, value
    finally:
        close = getattr(below, "close", None)
        if close is not None:
            close()
