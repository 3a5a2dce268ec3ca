"""Byte keys for the per-partition store, built so that plain byte order is the order scans need.

Every key starts with one namespace byte. Strings are UTF-8 behind a 2-byte big-endian length, so
an id that is a prefix of another id (``"ab"`` / ``"abc"``) never shares a key prefix with it;
integers are big-endian unsigned, so numeric order is byte order. Timer keys put the due time first,
which makes a scan of the ``TIMER`` namespace a scan in due order.

Keys longer than :data:`MAX_KEY_SIZE` (LMDB's limit) are refused with :class:`KeyTooLongError`.
"""

from __future__ import annotations

import functools
import struct

__all__ = [
    "ACTIVE",
    "DEDUP",
    "INBOX",
    "INVOCATION",
    "JOURNAL",
    "LOCAL",
    "MAX_KEY_SIZE",
    "META",
    "PROMISE",
    "PROMISE_WAITER",
    "STATE",
    "SUBSCRIBER",
    "TIMER",
    "KeyTooLongError",
    "active_key",
    "dedup_key",
    "inbox_key",
    "inbox_prefix",
    "invocation_key",
    "journal_key",
    "journal_prefix",
    "local_key",
    "meta_key",
    "parse_active_key",
    "parse_inbox_key",
    "parse_journal_key",
    "parse_promise_waiter_key",
    "parse_state_key",
    "parse_subscriber_key",
    "parse_timer_key",
    "prefix_end",
    "promise_key",
    "promise_waiter_key",
    "promise_waiter_prefix",
    "state_key",
    "state_key_under",
    "state_prefix",
    "subscriber_key",
    "subscriber_prefix",
    "timer_key",
]

INVOCATION = b"I"
JOURNAL = b"J"
STATE = b"S"
INBOX = b"Q"
TIMER = b"T"
DEDUP = b"D"
"""Other ids of an invocation (a Client's own id for a workflow's run): alias id -> invocation id."""
META = b"M"
"""Engine counters; changelogged like everything else."""
ACTIVE = b"A"
"""Non-exclusive invocations not finished yet: id -> empty."""
SUBSCRIBER = b"R"
"""Callers waiting for an invocation's answer: (id, caller id, seq) -> caller partition."""
PROMISE = b"P"
"""Workflow promises: (workflow, key, name) -> outcome."""
PROMISE_WAITER = b"W"
"""Invocations awaiting a promise: (workflow, key, name, id, seq) -> empty."""
LOCAL = b"L"
"""Facts about this copy of the store (changelog offset, format); never changelogged."""

MAX_KEY_SIZE = 511
"""LMDB's default maximum key length; both store backends enforce it."""

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class KeyTooLongError(ValueError):
    """A key (or one string inside it) is longer than the store accepts."""


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise KeyTooLongError(f"key component of {len(b)} bytes exceeds 65535: {s[:40]!r}...")
    return _U16.pack(len(b)) + b


def _u32(n: int) -> bytes:
    if not 0 <= n <= 0xFFFF_FFFF:
        raise ValueError(f"{n} does not fit an unsigned 32-bit key component")
    return _U32.pack(n)


def _u64(n: int) -> bytes:
    if not 0 <= n <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"{n} does not fit an unsigned 64-bit key component")
    return _U64.pack(n)


def _done(key: bytes) -> bytes:
    if len(key) > MAX_KEY_SIZE:
        raise KeyTooLongError(f"key of {len(key)} bytes exceeds the store's limit of {MAX_KEY_SIZE}: "
                              f"{key[:60]!r}...")
    return key


class _Reader:
    """Parses one key left to right, failing loudly on anything malformed."""

    __slots__ = ("_key", "_pos")

    def __init__(self, key: bytes, namespace: bytes) -> None:
        if key[:1] != namespace:
            raise ValueError(f"not a {namespace!r} key: {key!r}")
        self._key = key
        self._pos = 1

    def str(self) -> str:
        n = self._fixed(_U16)
        end = self._pos + n
        if end > len(self._key):
            raise ValueError(f"truncated string in key {self._key!r}")
        s = self._key[self._pos:end].decode("utf-8")
        self._pos = end
        return s

    def u32(self) -> int:
        return self._fixed(_U32)

    def u64(self) -> int:
        return self._fixed(_U64)

    def _fixed(self, st: struct.Struct) -> int:
        end = self._pos + st.size
        if end > len(self._key):
            raise ValueError(f"truncated integer in key {self._key!r}")
        (v,) = st.unpack_from(self._key, self._pos)
        self._pos = end
        return int(v)

    def end(self) -> None:
        if self._pos != len(self._key):
            raise ValueError(f"trailing bytes in key {self._key!r}")


def invocation_key(inv_id: str) -> bytes:
    """Key of an invocation's status row."""
    return _done(INVOCATION + _str(inv_id))


def journal_prefix(inv_id: str) -> bytes:
    """Prefix of every journal entry of one invocation (and of no other invocation's)."""
    return JOURNAL + _str(inv_id)


def journal_key(inv_id: str, seq: int) -> bytes:
    """Key of journal entry `seq` (u32) of an invocation; entries sort by seq."""
    return _done(journal_prefix(inv_id) + _u32(seq))


def parse_journal_key(k: bytes) -> tuple[str, int]:
    """Inverse of :func:`journal_key`."""
    r = _Reader(k, JOURNAL)
    out = (r.str(), r.u32())
    r.end()
    return out


@functools.lru_cache(maxsize=65_536)  # built for every invocation of an object key: keys recur
def state_prefix(obj: str, key: str) -> bytes:
    """Prefix of every state entry of one virtual object instance."""
    return STATE + _str(obj) + _str(key)


def state_key(obj: str, key: str, name: str) -> bytes:
    """Key of one named state value of a virtual object instance."""
    return _done(state_prefix(obj, key) + _str(name))


@functools.lru_cache(maxsize=65_536)  # a get and a set of the same entry per event: keys recur
def state_key_under(prefix: bytes, name: str) -> bytes:
    """:func:`state_key` for a prefix from :func:`state_prefix` (built once per object instance)."""
    return _done(prefix + _str(name))


def parse_state_key(k: bytes) -> tuple[str, str, str]:
    """Inverse of :func:`state_key`."""
    r = _Reader(k, STATE)
    out = (r.str(), r.str(), r.str())
    r.end()
    return out


def inbox_prefix(obj: str, key: str) -> bytes:
    """Prefix of one object instance's inbox; ``INBOX`` alone covers every inbox."""
    return INBOX + _str(obj) + _str(key)


def inbox_key(obj: str, key: str, seq: int) -> bytes:
    """Key of inbox entry `seq` (u64) of an object instance; entries sort in arrival order."""
    return _done(inbox_prefix(obj, key) + _u64(seq))


def parse_inbox_key(k: bytes) -> tuple[str, str, int]:
    """Inverse of :func:`inbox_key`."""
    r = _Reader(k, INBOX)
    out = (r.str(), r.str(), r.u64())
    r.end()
    return out


def timer_key(due_ms: int, inv_id: str, seq: int) -> bytes:
    """Key of a timer; due time (u64 ms) first so the ``TIMER`` namespace scans in due order."""
    return _done(TIMER + _u64(due_ms) + _str(inv_id) + _u32(seq))


def parse_timer_key(k: bytes) -> tuple[int, str, int]:
    """Inverse of :func:`timer_key`: ``(due_ms, inv_id, seq)``."""
    # Unrolled (the timer index parses every row it loads); same checks as the other parsers.
    if k[:1] != TIMER:
        raise ValueError(f"not a {TIMER!r} key: {k!r}")
    try:
        (due,) = _U64.unpack_from(k, 1)
        (n,) = _U16.unpack_from(k, 9)
        end = 11 + n
        (seq,) = _U32.unpack_from(k, end)
    except struct.error as e:
        raise ValueError(f"truncated timer key {k!r}") from e
    if len(k) != end + 4:
        raise ValueError(f"trailing bytes in key {k!r}")
    return int(due), k[11:end].decode("utf-8"), int(seq)


def active_key(inv_id: str) -> bytes:
    """Marks a non-exclusive invocation as not finished (scanned on load to resume it)."""
    return _done(ACTIVE + _str(inv_id))


def parse_active_key(k: bytes) -> str:
    r = _Reader(k, ACTIVE)
    out = r.str()
    r.end()
    return out


def subscriber_prefix(inv_id: str) -> bytes:
    return SUBSCRIBER + _str(inv_id)


def subscriber_key(inv_id: str, caller_id: str, seq: int) -> bytes:
    """One caller (its invocation id and journal position) waiting for `inv_id`'s answer."""
    return _done(subscriber_prefix(inv_id) + _str(caller_id) + _u32(seq))


def parse_subscriber_key(k: bytes) -> tuple[str, str, int]:
    r = _Reader(k, SUBSCRIBER)
    out = (r.str(), r.str(), r.u32())
    r.end()
    return out


def promise_key(obj: str, key: str, name: str) -> bytes:
    return _done(PROMISE + _str(obj) + _str(key) + _str(name))


def promise_waiter_prefix(obj: str, key: str, name: str) -> bytes:
    return PROMISE_WAITER + _str(obj) + _str(key) + _str(name)


def promise_waiter_key(obj: str, key: str, name: str, inv_id: str, seq: int) -> bytes:
    return _done(promise_waiter_prefix(obj, key, name) + _str(inv_id) + _u32(seq))


def parse_promise_waiter_key(k: bytes) -> tuple[str, str, str, str, int]:
    r = _Reader(k, PROMISE_WAITER)
    out = (r.str(), r.str(), r.str(), r.str(), r.u32())
    r.end()
    return out


def dedup_key(token: str) -> bytes:
    """Key of a deduplication token: an alias id that names another invocation."""
    return _done(DEDUP + _str(token))


def meta_key(name: str) -> bytes:
    """Key of a changelogged engine counter."""
    return _done(META + _str(name))


def local_key(name: str) -> bytes:
    """Key of a fact about this store copy only; never written to the changelog."""
    return _done(LOCAL + _str(name))


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix`; None if there is none
    (empty prefix or all ``0xff``)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
