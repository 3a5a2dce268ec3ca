"""One owned partition: its store and overlay, timers, key queues and in-memory invocations.

The worker turns consumed records into invocations, drives them, and hands the commit cycle a
``CycleSlice`` (overlay + outputs + offsets + releases) to commit. It never talks to Kafka itself.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from processor._app import App, Binding, HandlerDef, HandlerKind
from processor._engine import tracing
from processor._engine.core import Entry, EntryKind, Failure, encode_chunk
from processor._engine.intake import Intake
from processor._engine.invocation import InvocationRuntime
from processor._engine.kafka import KnownTopics
from processor._engine.limits import Limiter, LimitQueue
from processor._engine.memtrim import Trimmer
from processor._engine.messaging import Messaging
from processor._engine.records import InRecord, InvocationRow, OutRecord, Status
from processor._engine.stats import DIVERGED, EXHAUSTED, UNCOUNTED, PartitionStats
from processor._engine.steps import Salvaged
from processor._errors import UnknownTopicError
from processor._retry import OnExhausted
from processor._serde import Serde
from processor.state import keys
from processor.state.overlay import Overlay, PartitionState
from processor.state.store import Store
from processor.timers import Fired, Timer, TimerIndex, TimerKind, encode_timer, fire

log = logging.getLogger("processor.partition")

INVOCATION_SEQ = 0xFFFFFFFF  # timer seq of invocation-level timers (retry, purge)
RETRIES_EXHAUSTED = "RetriesExhausted"  # processor.error.class of an invocation's input dead-lettered
_U64 = struct.Struct(">Q")


@dataclass(slots=True, kw_only=True)
class CycleSlice:
    """What one partition contributes to one commit cycle."""

    partition: int
    overlay: Overlay
    outputs: list[OutRecord]
    offsets: dict[str, int]
    releases: list[Callable[[], None]]
    generation: bool = False  # holds this owner's step generation: steps skip the commit wait once it commits
    sealed_at: float = 0.0  # the worker's clock at the seal, before the transaction proves the membership


def meta_int(get: Callable[[bytes], bytes | None], name: str) -> int:
    """An engine counter from the ``META`` namespace (0 when never written), read through `get`."""
    raw = get(keys.meta_key(name))
    return int(_U64.unpack(raw)[0]) if raw else 0


class StepSink(Protocol):
    """Where step results go to be acknowledged (``processor._engine.steps.StepLog``)."""

    def write(self, partition: int, invocation_id: str, gen: int, entry: Entry, reads: bytes,
              on_acked: Callable[[int | None], None]) -> None: ...


class PartitionWorker(Intake, Messaging, Limiter):
    stats: PartitionStats = UNCOUNTED  # the engine's counters (metrics), set when it builds the worker
    runtime_class: type[InvocationRuntime] = InvocationRuntime  # the testing kit's replayer stops at a journal's end
    def __init__(self, *, app: App, partition: int, partitions_total: int, store: Store, step_executor: Executor,
                 on_work: Callable[[], None], trimmer: Trimmer | None = None, steps: StepSink | None = None,
                 step_lease_s: float = 4.0, clock: Callable[[], float] = time.monotonic,
                 topics: KnownTopics | None = None, wall: Callable[[], float] = time.time) -> None:
        self.app = app
        self.partition = partition
        self.partitions_total = partitions_total
        self._next_suspend_check = 0.0
        self.step_executor = step_executor
        self.state = PartitionState(store)
        self.timers = TimerIndex(self.state)
        self._timer_actions = {TimerKind.SLEEP: self._sleep_over, TimerKind.SEND: self._send_due,
                               TimerKind.STEP_RETRY: self._step_retry_due,
                               TimerKind.INVOCATION_RETRY: self._invocation_retry_due,
                               TimerKind.PURGE: self._retention_over}
        self._on_work = on_work
        self._positions: dict[str, int] = {}
        self._received: dict[str, int] = {}  # per topic: the offset after the last record received
        self.redelivered = 0  # records the consumer delivered again, dropped (``_delivered_again``)
        self._committed_positions: dict[str, int] = {}
        self._outputs: list[OutRecord] = []
        self._releases: list[Callable[[], None]] = []
        self.runtimes: dict[str, InvocationRuntime] = {}
        self._queues: dict[tuple[str, str], deque[str]] = {}
        # Limited handlers' queues (limits.py): by (target, key or ""), each queued id's queue, and
        # when a queue waiting for its rate may start its next
        self._limited: dict[tuple[str, str], LimitQueue] = {}
        self._limit_of: dict[str, tuple[str, str]] = {}
        self._limit_wake: dict[tuple[str, str], int] = {}
        # Invocations in flight are written to the store only when a cycle they outlive is sealed
        # (docs/architecture.md, "What a cycle writes"): `_durable` holds the ids of those in memory
        # or queued whose row and slot (inbox or active key) the store or a sealed overlay has (one
        # out of memory is durable if the store has its row), `_dirty` the in-memory ones with
        # unsaved changes, `_queued_rows` rows queued behind their key that were never saved.
        self._durable: set[str] = set()
        self._dirty: dict[str, InvocationRuntime] = {}
        self._queued_rows: dict[str, InvocationRow] = {}
        self._held: deque[tuple[InRecord, Binding]] = deque()  # input not routed yet (on_input)
        self._held_since = 0.0
        self._keep_journals = app.config.journal_retention.total_seconds() > 0
        # Step results on the steps log (decision 007): this owner's generation, whether the cycle
        # holding it committed (until then steps wait for commits), what the restore salvaged and
        # which offset every record below is absorbed by a committed cycle.
        self._steps = steps
        self._salvaged: Salvaged | None = None
        self._generation_pending = False
        self.steps_ready = False
        self._absorbing: set[str] = set()
        self._acked_end = 0
        self._steps_from = 0
        # A step acknowledged later than `step_lease_s` after the seal of the last cycle that
        # committed waits for the next commit instead (a zombie's never comes): see ``log_step``.
        self.step_lease_s = step_lease_s
        self._clock = clock
        self._wall = wall  # the wall clock (seconds) of timers and ctx.time(): the testing kit's moves
        self._lease_until = 0.0
        self._inbox_seq = 0
        self.bodies_running = 0
        self.bodies_ended = 0  # ever (step bodies run, acknowledgements received): a drain waits on it
        self.drain_until_ended = 0  # ... until it reaches this: every body running when it began ended
        self._eager = False  # an eager handler is running (``start``)
        self.draining = False  # set by the engine before a seal: held input waits (``route_held``)
        self.queued = 0  # exclusive invocations waiting behind another of their key
        self.trimmer = trimmer or Trimmer()
        self.tracer = tracing.tracer()
        self._topics = topics  # None: every topic exists (tests without Kafka)

    # -- host protocol for invocations ----------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._wall() * 1000)

    def wall_time(self) -> float:
        return self._wall()

    def topic_exists(self, topic: str) -> bool:
        return self._topics is None or self._topics.check(topic)

    def touched(self, rt: InvocationRuntime) -> None:
        if self._dirty.get(rt.invocation_id) is not rt:  # once per cycle is enough (several per action)
            self._dirty[rt.invocation_id] = rt
            self._on_work()

    def log_step(self, rt: InvocationRuntime, entry: Entry, release: Callable[[], None]) -> bool:
        """Make a step's outcome durable by the steps log's acknowledgement, then journal it and run
        `release` at once (no wait for the cycle to commit). False when this partition cannot yet:
        the caller journals it and releases after commit.

        The release also needs a lease. A commit proves this instance was a member of the group
        when its cycle was sealed; the partition moves to another owner only once this member's
        session expired (``session.timeout.ms`` without a heartbeat, sent by a thread that runs
        whenever this loop does). So within `step_lease_s` of that seal (the session timeout less
        two heartbeat intervals) no new owner has read the steps log past this record; later, the
        release waits for the next commit — which a zombie woken from a stall never makes, so its
        handler never sees a step result the new owner's replay contradicts (decision 007). With
        static membership a second process with the same instance id would take over at once; the
        state-dir lock keeps one per id on a machine, and a deployment must keep one per id too."""
        self.stats.step(entry)
        if self._steps is None or not self.steps_ready:
            return False
        assert self._salvaged is not None

        def acked(offset: int | None) -> None:
            self.body_ended()
            if not rt.alive or self.runtimes.get(rt.invocation_id) is not rt:
                return  # dropped meanwhile (abort, revoke): a restore salvages the record
            rt.record(entry)
            if offset is None:  # not acknowledged: may or may not be there; the commit decides
                rt.after_commit(release)
                return
            self._acked_end = max(self._acked_end, offset + 1)
            if self._clock() > self._lease_until:
                rt.after_commit(release)  # this owner may be a zombie by now: a commit proves it is not
                return
            release()
        self.bodies_running += 1  # a step is not done until acknowledged: the cycle lingers for it too
        self._steps.write(self.partition, rt.invocation_id, self._salvaged.generation, entry,
                          rt.reads_before(entry.seq), acked)
        return True

    def body_ended(self) -> None:
        """A step body returned, or its record was acknowledged (``bodies_running`` went up for it)."""
        self.bodies_running -= 1
        self.bodies_ended += 1

    def read(self, key: bytes) -> bytes | None:
        return self.state.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.state.scan(prefix)

    def write(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.state.delete(key)
        else:
            self.state.put(key, value)
        self._on_work()

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]]) -> None:
        self._outputs.append(OutRecord(topic=topic, partition=None, key=key, value=value, headers=headers))
        self._on_work()

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._releases.append(fn)
        self._on_work()

    def schedule_timer(self, due_ms: int, invocation_id: str, seq: int, kind: TimerKind,
                       attempt: int = 0) -> None:
        self.timers.schedule(Timer(due_ms=due_ms, invocation_id=invocation_id, seq=seq,
                                   payload=encode_timer(kind, attempt)))
        self._on_work()

    # -- loading ---------------------------------------------------------------------------------

    def load(self, salvaged: Salvaged | None = None) -> None:
        """Rebuild in-memory state from the store (after restore, or after an abort) and resume.
        `salvaged`: the steps log's records no committed cycle absorbed, adopted by the restore."""
        raw = self.state.get(keys.meta_key("inbox-seq"))
        self._inbox_seq = _U64.unpack(raw)[0] if raw else 0
        if self._steps is not None and salvaged is not None:
            self._salvaged = salvaged
            self._generation_pending = True  # committed by the next cycle, which this starts
            self._steps_from = meta_int(self.state.get, "steps-from")
            self._on_work()
        self.timers.load(self.now_ms())
        limited: list[tuple[str, str, str]] = []
        for k, v in self.state.scan(keys.INBOX):
            obj, key, _seq = keys.parse_inbox_key(k)
            if "/" in obj:  # a limited handler's queue (its target), not an object key's
                limited.append((obj, key, v.decode()))
            else:
                self._queues.setdefault((obj, key), deque()).append(v.decode())
            self._durable.add(v.decode())
        self.queued = sum(len(q) - 1 for q in self._queues.values())
        active = [keys.parse_active_key(k) for k, _ in self.state.scan(keys.ACTIVE)]
        self._durable.update(active)
        resumed = 0
        for q in self._queues.values():
            resumed += self._resume(q[0])
        for inv in active:
            resumed += self._resume(inv)
        resumed += self.load_limited(limited)
        if resumed:
            log.info("partition %d: resumed %d in-flight invocation(s)", self.partition, resumed)

    def _resume(self, invocation_id: str) -> int:
        data = self.state.get(keys.invocation_key(invocation_id))
        if data is None:
            log.error("partition %d: active invocation %s has no row", self.partition, invocation_id)
            return 0
        row = InvocationRow.decode(data)
        if row.status in (Status.BACKING_OFF, Status.SUSPENDED):
            return 0  # a timer or a completion restarts it
        if row.status is Status.PAUSED:
            log.warning("invocation %s was paused (%s); replaying it again with this deploy",
                        row.id, row.paused_reason)
        self.start(row)
        return 1

    # -- invocation lifecycle --------------------------------------------------------------------

    def create(self, row: InvocationRow, h: HandlerDef, *, fresh: bool = True, eager: bool = False,
               decoded: tuple[Any] | None = None) -> None:
        """A new invocation: run it now, or queue it behind the running one of its key. Nothing is
        written yet: a cycle it outlives saves it (``save``). `eager`: see ``start``."""
        self.stats.created(h.target)
        if h.limit is not None:
            self.limited_create(row, h, fresh=fresh, eager=eager, decoded=decoded)
            return
        if h.kind.exclusive:
            assert row.key is not None
            q = self._queues.setdefault((h.service, row.key), deque())
            q.append(row.id)
            if len(q) > 1:
                self.queued += 1
                self._queued_rows[row.id] = row if row.status is Status.QUEUED else replace(row, status=Status.QUEUED)
                self._on_work()
                return
        self.start(row, fresh=fresh, eager=eager, h=h, decoded=decoded)

    def start(self, row: InvocationRow, *, fresh: bool | None = None, eager: bool = False,
              h: HandlerDef | None = None, decoded: tuple[Any] | None = None) -> None:
        """Run `row`'s handler. `fresh`: never ran, so it has no journal to read (default: queued).
        `eager`: the handler runs right here up to its first suspension (a counter's handler runs to
        its end: no task, no trip through the loop, its key free for the next record at once) —
        unless this is already inside an eager handler (its finish starting the next of its key):
        that one gets a task, so eager runs never nest. `h`: its handler, if the caller has it;
        `decoded`: its input, if the caller decoded it already."""
        if h is None:
            h = self.app.handler(row.target)
        if h is None:
            self.finish_row(row, None, Failure(type="UnknownHandler",
                                                message=f"no handler {row.target} in this deploy"))
            return
        if fresh is None:
            fresh = row.status is Status.QUEUED
        if not fresh and row.id not in self._durable and self._stored(row.id):
            self._durable.add(row.id)  # back from the store (an evicted invocation leaves `_durable`)
        self._queued_rows.pop(row.id, None)
        if row.status is not Status.RUNNING:
            row = row.moved(Status.RUNNING)
        rt = self.runtime_class(self, row, h, self._input_serde(row, h), fresh=fresh, decoded=decoded)
        if self._salvaged is not None and row.id in self._salvaged.entries:
            rt.adopt(self._salvaged.entries.pop(row.id))
            self._absorbing.add(row.id)  # saved (or finished) in this cycle: its records are absorbed
        self.runtimes[row.id] = rt
        self.touched(rt)
        if eager and not self._eager:
            self._eager = True
            try:
                rt.start(eager=True)
            finally:
                self._eager = False
        else:
            rt.start()

    def _input_serde(self, row: InvocationRow, h: HandlerDef) -> Serde[Any]:
        binding = self.app.bindings.get(row.source_topic or "")
        if binding is not None:
            return binding.serde
        return h.input_serde or self.app.config.serde

    def finished(self, rt: InvocationRuntime, *, result: bytes | None, failure: Failure | None) -> None:
        self.runtimes.pop(rt.invocation_id, None)
        self._dirty.pop(rt.invocation_id, None)
        self.finish_row(rt.row, result, failure, rt=rt)

    def finish_row(self, row: InvocationRow, result: bytes | None, failure: Failure | None, *,
                   rt: InvocationRuntime | None = None) -> None:
        """Finish `row` for good: answer its callers, keep its row for ``retention`` where someone
        may still ask for it, and delete what a save wrote of it (nothing, if it never outlived a cycle)."""
        self.stats.finished(row.target, failure)
        now = self.now_ms()
        # Out of memory (evicted, or never in it): durable if the store has its row.
        durable = row.id in self._durable or (rt is None and self._stored(row.id))
        self._durable.discard(row.id)
        self._queued_rows.pop(row.id, None)
        h = rt.handler if rt is not None else self.app.handler(row.target)
        keep = self._keeps_row(row, h)
        if keep or row.notify or self._may_have_subscribers(row, h):  # else no one reads its final row
            status = Status.COMPLETED if failure is None else Status.FAILED
            row = row.moved(status, result=result, failure=failure, finished_ms=now, retry_at_ms=None)
            self.answer(row, h)
        if keep:
            self.write(keys.invocation_key(row.id), row.encode())
            cfg = self.app.config
            keep_for = cfg.journal_retention if row.source_topic is not None else max(cfg.retention,
                                                                                     cfg.journal_retention)
            self.schedule_timer(now + int(keep_for.total_seconds() * 1000), row.id, INVOCATION_SEQ, TimerKind.PURGE)
        elif durable:
            self.write(keys.invocation_key(row.id), None)
        if self._keep_journals:
            if rt is not None:
                self._save_journal(rt, everything=not durable)
        elif durable:
            self._delete_journal(row.id, rt)
        if failure is not None:
            log.warning("invocation %s (%s) failed: %s: %s", row.id, row.target, failure.type, failure.message)
        self._release_slot(row, durable)

    def _stored(self, invocation_id: str) -> bool:
        """Whether the store (or a sealed overlay) has the invocation's row: how one out of memory,
        and so out of ``_durable``, is known to be durable."""
        return self.state.get(keys.invocation_key(invocation_id)) is not None

    def _keeps_row(self, row: InvocationRow, h: HandlerDef | None) -> bool:
        """A finished row stays (for ``retention``) where a caller or Client may ask for it: invoked by
        a command, or a workflow's one run per key. A topic record's invocation has no one to answer:
        its row stays only while journals are kept (``journal_retention``). `h`: its handler."""
        if row.source_topic is None or self._keep_journals:
            return True
        return h is not None and h.kind is HandlerKind.WORKFLOW_RUN

    def _release_slot(self, row: InvocationRow, durable: bool) -> None:
        if row.id in self._limit_of:
            self.limited_release(row, durable)
            return
        if durable:
            if row.inbox_seq is not None and row.key is not None:
                self.write(keys.inbox_key(row.service, row.key, row.inbox_seq), None)
            else:
                self.write(keys.active_key(row.id), None)
        if row.key is None:
            return
        q = self._queues.get((row.service, row.key))
        if q and q[0] == row.id:
            q.popleft()
            self.queued -= bool(q)
            if q:
                nxt = self._row(q[0])
                if nxt is not None:
                    self.start(nxt)
            else:
                del self._queues[(row.service, row.key)]
            if self._held:
                self.route_held()

    # -- saving invocations that outlive their cycle ----------------------------------------------

    def save(self, rt: InvocationRuntime, row: InvocationRow | None = None) -> None:
        """Write what the store lacks of in-flight `rt` (with its row changed to `row`, if given): its
        row, its slot and its journal growth as one record. At every seal for touched invocations, and
        whenever one leaves memory."""
        if row is not None:
            rt.row, rt.row_dirty = row, True
        self._dirty.pop(rt.invocation_id, None)
        if rt.invocation_id not in self._durable:
            rt.row = self._claim_slot(rt.row)
            rt.row_dirty = True
        if rt.row_dirty:
            rt.row_dirty = False
            self.write(keys.invocation_key(rt.invocation_id), rt.row.encode())
        self._save_journal(rt)

    def _claim_slot(self, row: InvocationRow) -> InvocationRow:
        """Write the slot that makes a load find in-flight `row` again: its place in its key's inbox
        (exclusive handlers) or its limited handler's queue, or its active key. Returns the row with
        its inbox seq."""
        self._durable.add(row.id)
        slot = self._limit_of.get(row.id)  # its place in its limited handler's queue, if it has one
        if slot is None:
            h = self.app.handler(row.target)
            if h is None or not h.kind.exclusive or row.key is None:
                self.write(keys.active_key(row.id), b"")
                return row
            slot = (row.service, row.key)
        self._inbox_seq += 1
        self.write(keys.meta_key("inbox-seq"), _U64.pack(self._inbox_seq))
        self.write(keys.inbox_key(slot[0], slot[1], self._inbox_seq), row.id.encode())
        return replace(row, inbox_seq=self._inbox_seq)

    def _save_journal(self, rt: InvocationRuntime, *, everything: bool = False) -> None:
        entries = rt.core.journal() if everything else rt.unsaved
        rt.unsaved = []
        if entries:
            last = {e.seq: e for e in entries}  # an entry changed twice in a cycle: its last state
            self.write(keys.journal_key(rt.invocation_id, rt.next_chunk), encode_chunk(last.values()))
            rt.next_chunk += 1

    def _delete_journal(self, invocation_id: str, rt: InvocationRuntime | None) -> None:
        if rt is not None:
            for n in range(rt.next_chunk):
                self.write(keys.journal_key(invocation_id, n), None)
        else:
            for k, _ in list(self.state.scan(keys.journal_prefix(invocation_id))):
                self.write(k, None)

    def _save_touched(self) -> None:
        """Before a seal: save every in-flight invocation this cycle touched, and every queued one."""
        for rt in list(self._dirty.values()):
            if self.runtimes.get(rt.invocation_id) is rt:
                self.save(rt)
        self._dirty.clear()
        for row in list(self._queued_rows.values()):
            row = self._claim_slot(row)
            self.write(keys.invocation_key(row.id), row.encode())
        self._queued_rows.clear()

    def backing_off(self, rt: InvocationRuntime, error: BaseException) -> None:
        self.runtimes.pop(rt.invocation_id, None)
        row = rt.row
        now = self.now_ms()
        attempt = row.attempt + 1
        policy = rt.handler.retry
        delay = policy.next_delay_ms(attempt, policy.waited_ms(attempt))
        if delay is None:
            self._retries_exhausted(rt, error, attempt)
            return
        self.stats.backing_off(row.target)
        log.warning("invocation %s (%s) attempt %d raised %s: %s; retrying in %d ms", row.id, row.target,
                    attempt, type(error).__name__, error, delay,
                    exc_info=None if isinstance(error, UnknownTopicError) else error)  # its message says it all
        # it leaves memory: the retry timer reads its row
        self.save(rt, row.moved(Status.BACKING_OFF, attempt=attempt, retry_at_ms=now + delay,  # why, for operators
                                failure=Failure(type=type(error).__name__, message=str(error))))
        self.schedule_timer(now + delay, row.id, INVOCATION_SEQ, TimerKind.INVOCATION_RETRY, attempt)

    def _retries_exhausted(self, rt: InvocationRuntime, error: BaseException, attempts: int) -> None:
        """`rt`'s handler raised and its retry policy gave up: pause the invocation, or dead-letter its
        input and fail it, or fail it, as its handler's ``on_exhausted`` says (decision 011). What its
        attempts journaled (state writes, emits, sends) stays either way: each was committed with the
        journal entry that keeps a retry from doing it again."""
        row, h = rt.row, rt.handler
        what = f"{type(error).__name__}: {error}"
        if h.on_exhausted is OnExhausted.PAUSE:
            self.stats.paused(row.target, EXHAUSTED)
            reason = f"retries exhausted after {attempts} attempt(s): {what}"
            if h.kind.exclusive and row.key is not None:
                reason += (f" (it holds key {row.key!r} of {row.service}: later invocations of the key wait "
                           "until it is retried or killed)")
            log.error("invocation %s (%s) paused: %s", row.id, row.target, reason, exc_info=error)
            self.save(rt, row.moved(Status.PAUSED, attempt=attempts, paused_reason=reason, retry_at_ms=None,
                                    failure=Failure(type=type(error).__name__, message=str(error))))
            return
        self._dirty.pop(rt.invocation_id, None)
        if h.on_exhausted is OnExhausted.DEAD_LETTER:
            self._dead_letter_input(row, error, attempts)
            message = f"dead-lettered to {self.app.dlq_topic} after {attempts} attempt(s): {error}"
        else:
            message = f"invocation failed after {attempts} attempt(s): {error}"
        self.finish_row(replace(row, attempt=attempts), None, rt=rt,
                        failure=Failure(type=type(error).__name__, message=message))

    def _dead_letter_input(self, row: InvocationRow, error: BaseException, attempts: int) -> None:
        """Send the input of `row`, whose retries ran out, to the app's DLQ in this cycle, with why."""
        self.stats.dead_lettered(RETRIES_EXHAUSTED)
        self.stats.invocation_dead_lettered(row.target, EXHAUSTED)
        log.error("invocation %s (%s): retries exhausted after %d attempt(s), input to %s: %s: %s", row.id,
                  row.target, attempts, self.app.dlq_topic, type(error).__name__, error, exc_info=error)
        headers = [*row.input_headers.items(),
                   ("processor.error", f"{type(error).__name__}: {error}".encode()),
                   ("processor.error.class", RETRIES_EXHAUSTED.encode()),
                   ("processor.error.type", type(error).__name__.encode()),
                   ("processor.handler", row.target.encode()),
                   ("processor.invocation.id", row.id.encode()),
                   ("processor.attempts", str(attempts).encode())]
        if row.source_topic is not None:
            headers += [("processor.source.topic", row.source_topic.encode()),
                        ("processor.source.partition", str(row.source_partition).encode()),
                        ("processor.source.offset", str(row.source_offset).encode())]
        key = None if row.key is None else row.key.encode()
        self._outputs.append(OutRecord(topic=self.app.dlq_topic, partition=self.partition, key=key,
                                       value=row.input, headers=headers))
        self._on_work()

    def paused(self, rt: InvocationRuntime, reason: str) -> None:
        self.runtimes.pop(rt.invocation_id, None)
        self.stats.paused(rt.row.target, DIVERGED)
        log.error("invocation %s (%s) paused: %s", rt.row.id, rt.row.target, reason)
        self.save(rt, rt.row.moved(Status.PAUSED, paused_reason=reason))

    # -- timers ----------------------------------------------------------------------------------

    def fire_timers(self, now_ms: int) -> None:
        self._route_stale_held()
        if fire(self.timers.pop_due(now_ms), self._timer_actions):
            self._on_work()
        self.limits_due()
        if time.monotonic() >= self._next_suspend_check:
            self._next_suspend_check = time.monotonic() + 0.25
            self.trimmer.evicted(self.suspend_idle(self.app.config.suspend_after.total_seconds()))

    def _sleep_over(self, f: Fired) -> None:
        self._complete_pending(f.timer.invocation_id, f.timer.seq, EntryKind.SLEEP, None, None)

    def _send_due(self, f: Fired) -> None:
        if f.data is not None:
            self.send_command(f.attempt, f.timer.invocation_id, f.data)

    def _step_retry_due(self, f: Fired) -> None:
        rt = self.runtimes.get(f.timer.invocation_id)
        if rt is not None:
            rt.wake_retry(f.timer.seq, f.timer.due_ms)

    def _invocation_retry_due(self, f: Fired) -> None:
        data = self.state.get(keys.invocation_key(f.timer.invocation_id))
        if data is not None:
            row = InvocationRow.decode(data)
            if row.status is Status.BACKING_OFF:
                self.start(row)

    def _retention_over(self, f: Fired) -> None:
        self._purge(f.timer.invocation_id)

    def _purge(self, invocation_id: str) -> None:
        for k, _ in list(self.state.scan(keys.journal_prefix(invocation_id))):
            self.write(k, None)
        self.write(keys.invocation_key(invocation_id), None)
        self.forget_alias(invocation_id)

    # -- the commit cycle ------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.state.dirty() or self._outputs or self._releases or self._dirty or self._queued_rows
                    or self._generation_pending or self._positions != self._committed_positions)

    def open_records(self) -> int:
        """Records the open cycle would write: store writes and outputs."""
        return self.state.open_writes() + len(self._outputs)

    def seal(self) -> CycleSlice:
        self._save_touched()
        generation = self._seal_steps()
        s = CycleSlice(generation=generation, sealed_at=self._clock(), partition=self.partition,
                       overlay=self.state.seal(),
                       outputs=self._outputs,
                       offsets={t: o for t, o in self._positions.items()
                                if self._committed_positions.get(t) != o},
                       releases=self._releases)
        self._outputs, self._releases = [], []
        return s

    def _seal_steps(self) -> bool:
        """Write this owner's generation into its first cycle, and the steps log offset below which
        every record is absorbed: by the journals this seal saved, or by invocations that finished."""
        sv = self._salvaged
        if sv is None:
            return False
        bump = self._generation_pending
        if bump:
            self._generation_pending = False
            self.write(keys.meta_key("steps-gen"), _U64.pack(sv.generation))
        for inv in self._absorbing:
            sv.offsets.pop(inv, None)
        self._absorbing.clear()
        start = max(self._acked_end, sv.end)
        if sv.offsets:
            start = min(start, min(sv.offsets.values()))
        if start > self._steps_from:
            self._steps_from = start
            self.write(keys.meta_key("steps-from"), _U64.pack(start))
        return bump

    def set_committed(self, offsets: dict[str, int]) -> None:
        """The group's committed offsets of this partition's topics, read when it became active."""
        self._committed_positions = dict(offsets)
        self._positions = dict(offsets)
        self._received = dict(offsets)

    def committed_offsets(self) -> dict[str, int]:
        """What the group has committed for this partition (as far as this instance knows)."""
        return dict(self._committed_positions)

    def committed(self, s: CycleSlice) -> None:
        """The cycle holding `s` committed in Kafka and its overlay is in LMDB: drop the layer, then
        release its results."""
        self.state.forget(s.overlay)
        self._committed_positions.update(s.offsets)
        if s.generation:
            self.steps_ready = True
        self._lease_until = max(self._lease_until, s.sealed_at + self.step_lease_s)
        for release in s.releases:
            release()

    def discard(self) -> None:
        """Drop everything uncommitted and every in-memory invocation (abort, revoke)."""
        for rt in self.runtimes.values():
            rt.drop()
        self.runtimes.clear()
        self._queues.clear()
        self._limited.clear()
        self._limit_of.clear()
        self._limit_wake.clear()
        self._durable.clear()
        self._dirty.clear()
        self._queued_rows.clear()
        self._held.clear()
        self.queued = 0
        self.state.discard()
        self._outputs, self._releases = [], []
        self._positions = dict(self._committed_positions)
        self._received = dict(self._committed_positions)

    def rows(self) -> list[InvocationRow]:
        """Every invocation row this partition knows, the in-memory version where there is one."""
        mine = {rt.invocation_id: rt.row for rt in self.runtimes.values()} | self._queued_rows
        stored = [InvocationRow.decode(v) for k, v in self.state.scan(keys.INVOCATION)]
        return [*mine.values(), *(r for r in stored if r.id not in mine)]

    def in_flight(self) -> int:
        """Invocations this partition is working through: in memory, or queued behind their key."""
        return len(self.runtimes) + self.queued

    def in_memory(self) -> int:
        return len(self.runtimes)

