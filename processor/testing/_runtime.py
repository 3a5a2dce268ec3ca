"""``TestRuntime``: an app's handlers run in-process by the real engine — partition workers, the
commit cycle, the journal and its replay — over in-memory twins of Kafka (``MemoryLog``, a
``MemoryTransactionalProducer``) and of the stores (``MemoryStore``), on a clock the test moves.

Records and commands reach the workers the way the poll loop hands them over (``on_input``,
``on_inbox``, ``fire_timers``), in offset order, from what a ``read_committed`` reader of the log
sees; every cycle is sealed, transacted, applied and released by ``Cycle``. What the twins leave
out is Kafka's distribution: one process owns every partition, no rebalance, no steps log (a step's
outcome is released when its cycle commits, as on an owner whose steps log is not ready yet).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processor import schemas
from processor._app import App
from processor._engine import routing
from processor._engine.commands import CommandKind, InboxCommand
from processor._engine.core import Entry, Failure
from processor._engine.cycle import Cycle
from processor._engine.invocation import InvocationRuntime
from processor._engine.messaging import failure_of
from processor._engine.metrics import CommitTimings
from processor._engine.partition import PartitionWorker
from processor._engine.ports import MemoryLog, MemoryTransactionalProducer
from processor._engine.records import InRecord, InvocationRow, Status
from processor._engine.waits import failure_error
from processor._errors import ProcessorError
from processor._inspect import entry_state, value_json
from processor._journal_export import IN_FLIGHT, export_line
from processor.state import keys
from processor.state.memory import MemoryStore
from processor.state.store import Store

log = logging.getLogger("processor.testing")

START = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # the runtime's clock starts here unless told otherwise
_SPINS = 20  # loop turns per settle round: enough for chains of callbacks to run out


class NotFinished(ProcessorError, AssertionError):
    """The invocation asked for has not finished (it waits: an awakeable, a timer, a call)."""


class ReplayDivergence(ProcessorError, AssertionError):
    """An invocation replayed from its journal called other actions than it journaled (always-replay
    mode, or the replayer): the message shows the journaled and the replayed action side by side."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One journal entry as a test reads it: `value` decoded as JSON where it is JSON."""

    seq: int
    kind: str
    name: str
    state: str  # "done", "failed", "waiting" or "retrying"
    value: Any
    failure: str | None
    started_ms: int | None = None  # on the runtime's clock: when it began, and when it ended
    ended_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Emitted:
    """A record a handler emitted (committed), its value decoded with the app's serde."""

    topic: str
    key: str | None
    value: Any
    headers: dict[str, bytes]


class _Worker(PartitionWorker):
    """A partition worker that tells the runtime what the engine only logs: journals of finished
    invocations (deleted from the store at once by default) and pauses."""

    kit: TestRuntime

    def finished(self, rt: InvocationRuntime, *, result: bytes | None, failure: Failure | None) -> None:
        self.kit._journals[rt.invocation_id] = rt.core.journal()
        super().finished(rt, result=result, failure=failure)

    def paused(self, rt: InvocationRuntime, reason: str) -> None:
        self.kit._paused[rt.invocation_id] = reason
        super().paused(rt, reason)


class TestRuntime:
    """Run `app`'s handlers in this process, without Kafka: the engine's own code paths over
    in-memory twins of the broker and the stores, on a clock that only moves when told to.

    Every method runs the app until nothing more happens without outside input (every record
    delivered, every cycle committed, no step body running), then returns. Time stands still
    meanwhile: a sleep or a timeout fires only when :meth:`advance` moves the clock past it.

    `always_replay`: after every commit that grew a journal, every invocation in memory is dropped
    and replayed from its journal, as a crash and restart would (the partitions are rebuilt from the
    stores); an invocation whose replay calls other actions than it journaled raises
    :class:`ReplayDivergence` from the method that ran it. `partitions`: of the app's topics
    (default: ``App(partitions=...)``, else 1). `start`: the clock's first reading. `timeout`: how
    long (real time) one method may wait for step bodies before it raises TimeoutError.

    Use it as a context manager (or call :meth:`close`): it owns an event loop and a thread pool.
    """

    __test__ = False  # not a test class, whatever pytest makes of its name

    def __init__(self, app: App, *, always_replay: bool = False, partitions: int | None = None,
                 start: dt.datetime = START, timeout: dt.timedelta = dt.timedelta(seconds=30)) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware, e.g. datetime(2030, 1, 1, tzinfo=UTC)")
        self.app = app
        self.always_replay = always_replay
        self.partitions = partitions or app.config.partitions or 1
        self._now = start.timestamp()
        self._timeout = timeout.total_seconds()
        self._runner = asyncio.Runner()
        self._pool = ThreadPoolExecutor(max(4, app.config.step_threads), thread_name_prefix="testing-step")
        self.log = MemoryLog(partitions={t: self.partitions for t in (*app.bindings, app.inbox_topic,
                                                                      app.results_topic, app.dlq_topic)})
        self._producer = MemoryTransactionalProducer(self.log, app.name)
        self._timings = CommitTimings()
        self._stores: dict[int, Store] = {n: MemoryStore() for n in range(self.partitions)}
        self._delivered: dict[tuple[str, int], int] = {}
        self._journals: dict[str, list[Entry]] = {}  # of finished invocations
        self._paused: dict[str, str] = {}
        self._grew = False  # a journal grew since the last replay of everything (always_replay)
        self._seq = 0
        self._workers: dict[int, _Worker] = {}
        self._runner.run(self._build())

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> TestRuntime:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop every invocation in memory, stop the event loop and the step threads."""
        for w in self._workers.values():
            w.discard()
        self._runner.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _build(self) -> None:
        """Partition workers over the stores, consuming from the group's committed offsets."""
        committed = self.log.group_offsets.get(self.app.name, {})
        self._workers = {}
        for n in range(self.partitions):
            w = _Worker(app=self.app, partition=n, partitions_total=self.partitions, store=self._stores[n],
                        step_executor=self._pool, on_work=_nothing, wall=lambda: self._now)
            w.kit = self
            offsets = {t: o for (t, p), o in committed.items() if p == n}
            w.set_committed(offsets)
            for t in (*self.app.bindings, self.app.inbox_topic):
                self._delivered[(t, n)] = offsets.get(t, 0)
            self._workers[n] = w
            w.load()

    # -- the clock -----------------------------------------------------------------------------------

    @property
    def now(self) -> dt.datetime:
        """The runtime's clock (what timers and ``ctx.time()`` read)."""
        return dt.datetime.fromtimestamp(self._now, dt.UTC)

    def advance(self, by: dt.timedelta) -> None:
        """Move the clock forward by `by`, firing every timer that falls due on the way in due order
        (each at its due time, so what it starts sees that time) — a week-long sleep takes no longer
        than any other step. A move of at least ``App(suspend_after=...)`` first evicts every
        invocation that only waits, as that much idle time does in production."""
        if by < dt.timedelta(0):
            raise ValueError(f"time only moves forward, got {by}")
        if by >= self.app.config.suspend_after:
            # Idle that long, an invocation that only waits leaves memory (`suspend_after`): its timer
            # or completion finds it in the store and replays it from its journal, as in production.
            for w in self._workers.values():
                w.suspend_idle(0.0)
        until = self._now + by.total_seconds()
        while True:
            due = [d for w in self._workers.values() for d in (w.timers.next_due_ms(), w.next_limit_wake_ms())
                   if d is not None]
            if not due or min(due) / 1000 > until:
                break
            self._now = max(self._now, min(due) / 1000)
            self._run()
        self._now = until
        self._run()

    # -- deploys -----------------------------------------------------------------------------------

    def deploy(self, app: App) -> None:
        """Replace the app's code with `app` (the same app name and topics) as a rolling deploy does:
        every partition is rebuilt from its store under the new code, which replays the invocations
        in flight from their journals (one that diverges is paused, see ``paused_reason``)."""
        if app.name != self.app.name:
            raise ValueError(f"a deploy keeps the app's name: {app.name!r} is not {self.app.name!r}")
        self.app = app
        self._runner.run(self._restart())
        self._run()

    # -- input ---------------------------------------------------------------------------------------

    def send(self, topic: str, value: Any, *, key: str | bytes | None = None,
             headers: dict[str, str | bytes] | None = None) -> None:
        """Produce a record to input topic `topic` (the value through the topic's serde; bytes as
        they are) and run what it starts."""
        binding = self.app.bindings.get(topic)
        if binding is None:
            raise ValueError(f"{topic!r} is not an input topic of app {self.app.name!r} "
                             f"(subscribed: {', '.join(sorted(self.app.bindings)) or 'none'})")
        data = bytes(value) if isinstance(value, (bytes, bytearray)) else binding.serde.serialize(value)
        kb = key.encode() if isinstance(key, str) else key
        hs = [(k, v.encode() if isinstance(v, str) else v) for k, v in (headers or {}).items()]
        partition = None
        if kb is None:
            partition, self._seq = self._seq % self.partitions, self._seq + 1
        self.log.append(topic, partition, kb, data, hs).state = "committed"
        self._run()

    def submit(self, target: str, input: Any, *, key: str | None = None,
               idempotency_key: str | None = None) -> str:
        """Start ``"service/handler"`` with `input` (and `key` for objects and workflows) as a
        Client's ``invoke`` does; run until it finishes or waits; return its id."""
        service, _, handler = target.partition("/")
        if not service or not handler:
            raise ValueError(f"target must be 'service/handler', got {target!r}")
        self._seq += 1
        seed = idempotency_key if idempotency_key is not None else f"testing-{self._seq}"
        p = routing.target_partition(key, f"client\0{target}\0{seed}", self.partitions)
        inv = routing.invocation_id(p, "client", target, key or "", seed)
        self._command(p, key or inv, InboxCommand(
            kind=CommandKind.INVOKE, invocation_id=inv, service=service, handler=handler, key=key,
            payload=self.app.config.serde.serialize(input), idempotency_key=idempotency_key, notify=True))
        return inv

    def invoke(self, target: str, input: Any, *, key: str | None = None) -> Any:
        """``submit`` and return the result: raises the handler's TerminalError if it failed, and
        :class:`NotFinished` if it still waits (resolve it, advance the clock, then ``result``)."""
        return self.result(self.submit(target, input, key=key))

    def submit_workflow(self, workflow: str, key: str, input: Any) -> str:
        """Start workflow `workflow`'s run for `key` (once per key), as ``Client.submit_workflow``."""
        p = routing.target_partition(key, "", self.partitions)
        inv = routing.invocation_id(p, "workflow", workflow, key)
        self._command(p, key, InboxCommand(kind=CommandKind.INVOKE, invocation_id=inv, service=workflow,
                                           handler="run", key=key, payload=self.app.config.serde.serialize(input),
                                           notify=True))
        return inv

    def resolve_awakeable(self, awakeable_id: str, value: Any) -> None:
        """Complete an awakeable with `value` and run what that wakes."""
        inv, _ = routing.parse_awakeable_id(awakeable_id)
        self._command(routing.partition_of(inv), inv, InboxCommand(
            kind=CommandKind.RESOLVE_AWAKEABLE, target_id=awakeable_id, payload=self.app.config.serde.serialize(value)))

    def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """Fail an awakeable: its awaiter gets TerminalError(reason)."""
        inv, _ = routing.parse_awakeable_id(awakeable_id)
        self._command(routing.partition_of(inv), inv, InboxCommand(
            kind=CommandKind.REJECT_AWAKEABLE, target_id=awakeable_id,
            failure=Failure(type="AwakeableRejected", message=reason)))

    def cancel(self, invocation_id: str) -> None:
        """Cancel: the handler gets InvocationCancelled at its next durable await."""
        self._command(routing.partition_of(invocation_id), invocation_id,
                      InboxCommand(kind=CommandKind.CANCEL, invocation_id=invocation_id))

    def kill(self, invocation_id: str) -> None:
        """Stop an invocation at once (it fails with Killed), as ``processor kill`` does."""
        self._command(routing.partition_of(invocation_id), invocation_id,
                      InboxCommand(kind=CommandKind.KILL, invocation_id=invocation_id))

    def retry(self, invocation_id: str) -> None:
        """Run a backing-off invocation now, or replay a paused one, as ``processor retry`` does."""
        self._paused.pop(invocation_id, None)
        self._command(routing.partition_of(invocation_id), invocation_id,
                      InboxCommand(kind=CommandKind.RETRY, invocation_id=invocation_id))

    def _command(self, partition: int, record_key: str, cmd: InboxCommand) -> None:
        self.log.append(self.app.inbox_topic, partition, record_key.encode(), cmd.encode(), []).state = "committed"
        self._run()

    # -- output ----------------------------------------------------------------------------------------

    def result(self, invocation_id: str) -> Any:
        """The result of a finished invocation started by ``submit``/``invoke``/``submit_workflow``
        (TerminalError if it failed); :class:`NotFinished` while it has not."""
        for r in reversed(self.log.read_committed(self.app.results_topic)):
            if r.key == invocation_id.encode():
                d = schemas.decode("InvocationResult", r.value or b"")
                if d["status"] == Status.FAILED.value:
                    failure = failure_of(d["failure"])
                    assert failure is not None
                    raise failure_error(failure)
                return None if d["value"] is None else self.app.config.serde.deserialize(d["value"])
        raise NotFinished(f"invocation {invocation_id} has not finished: {self.status(invocation_id)}")

    def status(self, invocation_id: str) -> str:
        """``"running"``, ``"suspended"``, ``"paused"``, ``"completed"`` ... as ``processor
        invocations`` shows it, or ``"unknown"`` for an id no partition holds."""
        row = self._row(invocation_id)
        return "unknown" if row is None else row.status.value

    def paused_reason(self, invocation_id: str) -> str | None:
        """Why a paused invocation was paused (a nondeterminism: both actions side by side)."""
        row = self._row(invocation_id)
        return None if row is None else row.paused_reason

    def emitted(self, topic: str) -> list[Any]:
        """The values committed to `topic` (``ctx.emit``), decoded with the app's serde, in order."""
        return [e.value for e in self.emitted_records(topic)]

    def emitted_records(self, topic: str) -> list[Emitted]:
        """The records committed to `topic`, with keys and headers."""
        serde = self.app.config.serde
        return [Emitted(topic=topic, key=None if r.key is None else r.key.decode(errors="replace"),
                        value=None if r.value is None else serde.deserialize(r.value), headers=dict(r.headers))
                for r in self.log.read_committed(topic)]

    def dead_letters(self) -> list[Emitted]:
        """Records sent to the app's dead-letter topic (the reason is the ``processor.error`` header)."""
        return [Emitted(topic=self.app.dlq_topic, key=None if r.key is None else r.key.decode(errors="replace"),
                        value=r.value, headers=dict(r.headers))
                for r in self.log.read_committed(self.app.dlq_topic)]

    def state(self, obj: str, key: str) -> dict[str, Any]:
        """The committed state of virtual object or workflow `obj` for `key`: name -> value."""
        store = self._stores[routing.partition_for_key(key.encode(), self.partitions)]
        serde = self.app.config.serde
        return {keys.parse_state_key(k)[2]: serde.deserialize(v) for k, v in store.scan(keys.state_prefix(obj, key))}

    def journal(self, invocation_id: str) -> list[JournalEntry]:
        """The journal of an invocation: in flight (as committed), or as it was when it finished."""
        entries = self._journals.get(invocation_id)
        if entries is None:
            entries = self._stored_journal(invocation_id)
        return [JournalEntry(seq=e.seq, kind=str(e.kind), name=e.name, state=entry_state(e), value=value_json(e.value),
                             failure=None if e.failure is None else f"{e.failure.type}: {e.failure.message}",
                             started_ms=e.started_ms, ended_ms=e.ended_ms)
                for e in entries]

    def export_journals(self, path: str | Path) -> int:
        """Write the journals of the invocations in flight (running, suspended, backing off, paused) to
        `path` as ``processor journal --export`` does, for ``replay``; returns how many."""
        n = 0
        with Path(path).open("wb") as f:
            for p, store in self._stores.items():
                for _, v in store.scan(keys.INVOCATION):
                    row = InvocationRow.decode(v)
                    if row.status in IN_FLIGHT:
                        f.write(export_line(p, row, self._stored_journal(row.id)) + b"\n")
                        n += 1
        return n

    def _stored_journal(self, invocation_id: str) -> list[Entry]:
        from processor._engine.core import decode_journal

        store = self._stores[routing.partition_of(invocation_id)]
        return decode_journal(v for _, v in store.scan(keys.journal_prefix(invocation_id)))

    def _row(self, invocation_id: str) -> InvocationRow | None:
        w = self._workers.get(routing.partition_of(invocation_id))
        if w is None:
            return None
        inv = w.resolve_alias(invocation_id)
        return next((r for r in w.rows() if r.id == inv), None)

    # -- running -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        self._runner.run(self._settle())
        if self._paused and self.always_replay:
            inv, reason = next(iter(self._paused.items()))
            raise ReplayDivergence(f"invocation {inv} diverged from its journal on replay: {reason}")

    async def _settle(self) -> None:
        """Deliver, fire, commit and (always_replay) replay until three rounds in a row did nothing."""
        deadline = time.monotonic() + self._timeout
        idle = 0
        while idle < 3:
            for _ in range(_SPINS):
                await asyncio.sleep(0)
            moved = self._deliver()
            for w in self._workers.values():
                w.fire_timers(int(self._now * 1000))
            moved = self._commit() or moved
            running = sum(w.bodies_running for w in self._workers.values())
            if self.always_replay and self._grew and not running:
                self._grew = False  # a step (or wait, or action) committed: replay everything up to it
                await self._restart()
                moved = True
            idle = 0 if moved or running else idle + 1
            if running:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"step bodies still running after {self._timeout:g}s")
                await asyncio.sleep(0.001)

    def _deliver(self) -> bool:
        """Hand the workers every committed record they have not had, in offset order."""
        moved = False
        for (topic, p), start in list(self._delivered.items()):
            records = self.log.logs.get((topic, p), [])
            at = start
            while at < len(records):
                r = records[at]
                if r is not None and r.state == "open":
                    break  # read_committed: nothing past an open transaction
                at += 1
                if r is None or r.state != "committed":
                    continue
                msg = InRecord(topic=topic, partition=p, offset=r.offset, key=r.key, value=r.value, headers=r.headers)
                w = self._workers[p]
                if topic == self.app.inbox_topic:
                    w.on_inbox(msg)
                else:
                    w.on_input(msg, self.app.bindings[topic])
                moved = True
            self._delivered[(topic, p)] = at
        return moved

    def _commit(self) -> bool:
        """One commit cycle over every worker with work, as the engine's commit loop runs it."""
        working = [w for w in self._workers.values() if w.has_work()]
        if not working:
            return False
        cycle = Cycle.seal(list(working), self.app.inbox_topic)
        written = cycle.transact(self._producer, changelog=self.app.changelog_topic, group=None,
                                 timings=self._timings, flush_timeout=1)
        cycle.apply(written, self._stores, gap_allowed=1, read_tail=self._read_tail)
        cycle.release(dict(self._workers))
        if any(k[:1] == keys.JOURNAL for s in cycle.slices for k, _ in s.overlay.items()):
            self._grew = True
        return True

    def _read_tail(self, store: Store, partition: int) -> int:
        log_ = self.log
        records = [r for r in log_.read_committed(self.app.changelog_topic)
                   if r.partition == partition and r.offset >= store.changelog_offset()]
        store.apply([(r.key or b"", r.value) for r in records], log_.end(self.app.changelog_topic, partition))
        return len(records)

    async def _restart(self) -> None:
        """What a crash and restart does to every partition: drop what is in memory, rebuild the
        workers from the stores, consume again from the committed offsets, replay what was running."""
        for w in self._workers.values():
            w.discard()
        await self._build()


def _nothing() -> None:
    """The workers' on_work: the runtime looks for work itself after every loop turn."""
