"""The sans-IO heart of durable execution: an invocation's journal and its replay cursor.

Events in (the handler calls an action; a new entry is recorded), decisions out (replay this entry,
or execute for real). No Kafka, no LMDB, no awaits — tests drive it with plain lists.
Positions are assigned when an action is *called*, so concurrent actions replay identically
whatever order they finished in.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

from processor import schemas
from processor._errors import NondeterminismError


class EntryKind(enum.StrEnum):
    """What a journal entry records: the context action that made it (``JournalEntry.kind``)."""

    RUN = "run"                      # ctx.run: the step's result or failure
    GET = "get"                      # ctx.get: the value read
    STATE_KEYS = "state_keys"        # ctx.state_keys: the names read
    SET = "set"
    CLEAR = "clear"
    CLEAR_ALL = "clear_all"
    EMIT = "emit"
    TIME = "time"                    # ctx.time: the wall clock read
    SLEEP = "sleep"                  # pending until its timer fires
    CALL = "call"                    # pending until the callee answers; value: the callee's id
    SEND = "send"                    # value: the callee's id
    AWAKEABLE = "awakeable"          # pending until resolved or rejected
    PROMISE = "promise"              # a workflow promise awaited
    PROMISE_PEEK = "promise_peek"
    PROMISE_COMPLETE = "promise_complete"
    SELECT = "select"                # value: the winner's name
    PATCH = "patch"                  # ctx.patched(name) returned True here: code from that patch on
    RESOLVE_AWAKEABLE = "resolve_awakeable"  # ctx.resolve_awakeable: name: the awakeable id (sent once)
    REJECT_AWAKEABLE = "reject_awakeable"
    CANCEL = "cancel"                # ctx.cancel: name: the invocation id (sent once)
    ATTACH = "attach"                # pending until the invocation named by `name` finishes; value: its result


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    type: str
    message: str


@dataclass(slots=True, kw_only=True)  # a value: never mutated (not frozen only because a frozen init is slow)
class Entry:
    """One journaled action. ``retry_at_ms`` set means a step still being retried, not completed."""

    seq: int
    kind: EntryKind
    name: str
    value: bytes | None = None
    failure: Failure | None = None
    attempts: int = 1
    retry_at_ms: int | None = None
    pending: bool = False          # a durable wait (sleep, call, awakeable, promise) not completed yet
    due_ms: int | None = None      # sleep: when it fires
    # Wall-clock epoch ms, for the journal's timeline (set by ``InvocationRuntime.record``): when the
    # action began (a step's first attempt, a wait's start) and when it completed (None until then).
    started_ms: int | None = None
    ended_ms: int | None = None

    @property
    def completed(self) -> bool:
        return not self.pending and self.retry_at_ms is None

    def describe(self) -> str:
        return f"#{self.seq} {self.kind}({self.name!r})"

    def encode(self) -> bytes:
        f = self.failure
        return schemas.encode_journal_entry(
            self.seq, self.kind, self.name, self.value, None if f is None else (f.type, f.message),
            self.attempts, self.retry_at_ms, self.pending, self.due_ms, self.started_ms, self.ended_ms)

    @staticmethod
    def decode(data: bytes) -> Entry:
        r = schemas.decode("JournalEntry", data)
        f = r["failure"]
        return Entry(seq=r["seq"], kind=EntryKind(r["kind"]), name=r["name"], value=r["value"],
                     failure=None if f is None else Failure(type=f["type"], message=f["message"]),
                     attempts=r["attempts"], retry_at_ms=r["retry_at_ms"], pending=r["pending"],
                     due_ms=r["due_ms"], started_ms=r["started_ms"], ended_ms=r["ended_ms"])


@dataclass(slots=True, kw_only=True)  # not frozen: one per context action, and frozen init is slow
class Replay:
    """The action at `seq` already happened: return its recorded outcome without running it."""

    seq: int
    entry: Entry


@dataclass(slots=True, kw_only=True)
class Execute:
    """The action at `seq` is past the journal (or not finished in it): run it for real, or for a
    durable wait journaled as pending, wait for its completion."""

    seq: int
    retrying: Entry | None = None  # the unfinished entry: a step mid-backoff or a pending wait


Decision = Replay | Execute


class InvocationCore:
    """Journal + replay cursor of one invocation attempt (a fresh core per replay from the top)."""

    def __init__(self, invocation_id: str, entries: Iterable[Entry] = ()) -> None:
        self.invocation_id = invocation_id
        self._journal: dict[int, Entry] = {e.seq: e for e in entries}
        self._next_seq = 0
        self._issued: dict[int, tuple[str, str]] = {}

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def replaying(self) -> bool:
        """True while the handler has not yet called past the last journaled action."""
        return any(seq >= self._next_seq for seq in self._journal)

    def journal(self) -> list[Entry]:
        return [self._journal[s] for s in sorted(self._journal)]

    def call(self, kind: EntryKind, name: str) -> Decision:
        """The handler called an action: assign its position and decide replay or execute.
        Raises NondeterminismError when the journal holds a different action at that position."""
        seq = self._next_seq
        self._next_seq += 1
        self._issued[seq] = (kind, name)
        entry = self._journal.get(seq)
        if entry is None:
            return Execute(seq=seq)
        if (entry.kind, entry.name) != (kind, name):
            raise NondeterminismError(invocation_id=self.invocation_id, seq=seq,
                                      journaled=entry.describe(),
                                      replayed=f"#{seq} {kind}({name!r})")
        if not entry.completed:
            return Execute(seq=seq, retrying=entry)
        return Replay(seq=seq, entry=entry)

    def patched(self, name: str) -> bool | Execute:
        """``ctx.patched(name)`` at the next position. True when the journal holds this patch's
        marker there (replayed: code that ran with the patch recorded it); False when the journal
        goes on without it (code from before the patch recorded this journal: no position is taken,
        so the old actions replay where they were); Execute past the journal (new code, running for
        real: the caller journals the marker there)."""
        entry = self._journal.get(self._next_seq)
        if entry is not None and (entry.kind, entry.name) == (EntryKind.PATCH, name):
            self.call(EntryKind.PATCH, name)
            return True
        if self.replaying:
            return False
        d = self.call(EntryKind.PATCH, name)
        assert isinstance(d, Execute)  # past every journaled position: nothing to replay
        return d

    def record(self, entry: Entry) -> Entry:
        """Journal the outcome of an executed action; returns the entry to persist."""
        issued = self._issued.get(entry.seq)
        if issued != (entry.kind, entry.name):
            raise ValueError(f"recording {entry.describe()} that was never called as such "
                             f"(called: {issued})")
        old = self._journal.get(entry.seq)
        if old is not None and old.completed:
            raise ValueError(f"{entry.describe()} is already journaled as completed")
        self._journal[entry.seq] = entry
        return entry

    def complete(self, entry: Entry) -> None:
        """A durable wait journaled as pending at ``entry.seq`` completed (timer fired, response or
        awakeable arrived). Whether or not the handler has called it yet in this attempt."""
        old = self._journal.get(entry.seq)
        if old is None or not old.pending or (old.kind, old.name) != (entry.kind, entry.name):
            raise ValueError(f"completing {entry.describe()}, but the journal holds "
                             f"{old.describe() if old else 'nothing'} there (pending: {old and old.pending})")
        self._journal[entry.seq] = entry

    def adopt(self, entry: Entry) -> bool:
        """Take a completed entry salvaged from the steps log (its cycle never committed) unless the
        journal already holds a completed one there. True if taken."""
        old = self._journal.get(entry.seq)
        if old is not None and old.completed:
            return False
        self._journal[entry.seq] = entry
        return True

    def entry(self, seq: int) -> Entry | None:
        return self._journal.get(seq)

    def random_seed(self) -> int:
        """A seed derived from the invocation id: the same on every replay."""
        return int.from_bytes(hashlib.blake2b(self.invocation_id.encode(), digest_size=8).digest(), "big")


_CHUNK = 0xC1  # first byte of a journal chunk; a lone entry starts with its schema version (< 0x80)
_LEN = struct.Struct(">I")


def encode_chunk(entries: Iterable[Entry]) -> bytes:
    """One journal record: the entries an invocation recorded or completed in one commit cycle."""
    parts = [bytes([_CHUNK])]
    for e in entries:
        data = e.encode()
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_journal(records: Iterable[bytes]) -> list[Entry]:
    """An invocation's journal from its records in key order (chunks, or single entries as written
    before chunks): a later record's entry replaces an earlier one with the same seq (a completed
    wait, a retried step). Entries in seq order."""
    by_seq: dict[int, Entry] = {}

    def put(e: Entry) -> None:
        before = by_seq.get(e.seq)
        if before is not None and e.started_ms is None:  # a completion written without the wait's start
            e.started_ms = before.started_ms
        by_seq[e.seq] = e

    for data in records:
        if not data or data[0] != _CHUNK:
            put(Entry.decode(data))
            continue
        pos, end = 1, len(data)
        while pos < end:
            (n,) = _LEN.unpack_from(data, pos)
            put(Entry.decode(data[pos + 4:pos + 4 + n]))
            pos += 4 + n
    return [by_seq[s] for s in sorted(by_seq)]


def retry_entry(entry: Entry, *, attempts: int, retry_at_ms: int, failure: Failure) -> Entry:
    """A step entry that records a failed attempt and when to try again."""
    return replace(entry, attempts=attempts, retry_at_ms=retry_at_ms, failure=failure, value=None)


def invocation_id_for_record(topic: str, partition: int, offset: int, *, owner: int | None = None) -> str:
    """Deterministic invocation id of the record at (topic, partition, offset), living on partition
    `owner` (default: where the record is; another one for a record forwarded to its key's owner):
    redelivery of the same record, or of its forward, can never start a second invocation. Readable
    (``inv-3-orders@1:42``) and cheap (no hash: one per record): a topic name holds neither ``@`` nor
    ``:``, so it never clashes with an id derived by ``routing.invocation_id``."""
    return f"inv-{partition if owner is None else owner}-{topic}@{partition}:{offset}"


