"""One invocation attempt in memory: runs the user's handler against its journal.

Every context action goes through the sans-IO core (replay or execute); executed actions are kept as
*unsaved* journal entries that the partition writes as one record when it seals a cycle the
invocation outlives (one that finishes within its cycle writes no journal at all), and results that
handler code may act on are released only after the cycle holding them commits (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Mapping
from concurrent.futures import Executor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from processor._app import App, HandlerDef, HandlerKind, Target
from processor._context import (
    _CURRENT_STEP,
    Context,
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from processor._engine import steps, tracing
from processor._engine.core import (
    Entry,
    EntryKind,
    Execute,
    Failure,
    InvocationCore,
    Replay,
    decode_journal,
    retry_entry,
)
from processor._engine.eager import eager_task
from processor._engine.inline import STEPS
from processor._engine.records import InvocationRow
from processor._engine.stats import PartitionStats
from processor._engine.waits import CANCELLED, Waits, failure_error
from processor._errors import (
    NondeterminismError,
    SerdeError,
    StepFailedError,
    TerminalError,
    UnknownTopicError,
    _Abandon,
)
from processor._futures import DurableFuture
from processor._models import dump
from processor._retry import RetryPolicy
from processor._serde import Serde
from processor.state import keys
from processor.timers import TimerKind

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("processor.invocation")


class Host(Protocol):
    """What an invocation needs from its partition worker."""

    app: App
    step_executor: Executor
    bodies_running: int  # step bodies executing or awaiting their acknowledgement (the cycle lingers for them)
    partition: int
    partitions_total: int
    tracer: Tracer | None  # OpenTelemetry, when the process set a tracer provider (processor/_engine/tracing.py)
    stats: PartitionStats

    def body_ended(self) -> None: ...
    def now_ms(self) -> int: ...
    def topic_exists(self, topic: str) -> bool: ...
    def wall_time(self) -> float: ...
    def touched(self, rt: InvocationRuntime) -> None: ...
    def log_step(self, rt: InvocationRuntime, entry: Entry, release: Callable[[], None]) -> bool: ...
    def read(self, key: bytes) -> bytes | None: ...
    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...
    def write(self, key: bytes, value: bytes | None) -> None: ...
    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]]) -> None: ...
    def after_commit(self, fn: Callable[[], None]) -> None: ...
    def schedule_timer(self, due_ms: int, invocation_id: str, seq: int, kind: TimerKind,
                       attempt: int = 0) -> None: ...
    def finished(self, rt: InvocationRuntime, *, result: bytes | None, failure: Failure | None) -> None: ...
    def backing_off(self, rt: InvocationRuntime, error: BaseException) -> None: ...
    def paused(self, rt: InvocationRuntime, reason: str) -> None: ...
    def resolve_target(self, target: Target, key: str | None) -> HandlerDef: ...
    def invoke(self, h: HandlerDef, arg: Any, key: str | None, *, seed: tuple[str, ...],
               caller: tuple[str, int] | None, delay_ms: int | None = None,
               timer_owner: tuple[str, int] | None = None, headers: list[tuple[str, bytes]] | None = None) -> str: ...
    def complete_entry(self, invocation_id: str, entry: Entry) -> None: ...
    def cancel_callee(self, callee_id: str) -> None: ...
    def send_command(self, partition: int, record_key: str, data: bytes) -> None: ...
    def cancel_delivered(self, rt: InvocationRuntime) -> None: ...
    def promise_state(self, rt: InvocationRuntime, name: str) -> tuple[bytes | None, Failure | None] | None: ...
    def promise_wait(self, rt: InvocationRuntime, name: str, seq: int) -> None: ...
    def promise_complete(self, rt: InvocationRuntime, name: str, value: bytes | None,
                         failure: Failure | None) -> bool: ...


# The journal entries whose timeline is kept (started_ms, ended_ms): steps and durable waits.
_TIMED = frozenset({EntryKind.RUN, EntryKind.SLEEP, EntryKind.CALL, EntryKind.AWAKEABLE, EntryKind.PROMISE,
                    EntryKind.SELECT, EntryKind.ATTACH})


def _resolve(fut: asyncio.Future[Any], value: Any) -> Callable[[], None]:
    def release() -> None:
        if not fut.done():
            fut.set_result(value)
    return release


def _reject(fut: asyncio.Future[Any], error: BaseException) -> Callable[[], None]:
    def release() -> None:
        if not fut.done():
            fut.set_exception(error)
    return release


def _terminal(f: Failure) -> TerminalError:
    if f.type == StepFailedError.__name__:
        return StepFailedError(f.message)
    return failure_error(f)


class _Ready:
    """An awaitable that is already done: awaiting it returns its value without suspending (no
    future, no trip through the event loop). ``asyncio.gather`` and friends accept it too."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # unreachable: makes this a generator that returns at once


_CONTEXTS: dict[HandlerKind, type[Context]] = {
    HandlerKind.SERVICE: Context, HandlerKind.SHARED: ObjectSharedContext, HandlerKind.EXCLUSIVE: ObjectContext,
    HandlerKind.WORKFLOW_RUN: WorkflowContext, HandlerKind.WORKFLOW_SHARED: WorkflowSharedContext}


class InvocationRuntime:
    """Drives one attempt of an invocation; dropped (``drop()``) on abort, revoke or pause."""

    def __init__(self, host: Host, row: InvocationRow, handler: HandlerDef, input_serde: Serde[Any], *,
                 fresh: bool = False, decoded: tuple[Any] | None = None) -> None:
        self.host = host
        self.row = row
        self.handler = handler
        self.invocation_id = row.id
        self.key = row.key
        self._input_serde = input_serde
        self._decoded = decoded  # (input,) when the partition decoded it already (checking the record)
        self._serde: Serde[Any] = host.app.config.serde
        # A fresh invocation (created by this process, never run) has no journal to read.
        records = [] if fresh else list(host.scan(keys.journal_prefix(row.id)))
        self.core = InvocationCore(row.id, decode_journal(v for _, v in records) if records else ())
        self.next_chunk = keys.parse_journal_key(records[-1][0])[1] + 1 if records else 0
        self.unsaved: list[Entry] = []  # recorded or completed since the partition last saved them
        self._state_prefix: bytes | None = None
        self.row_dirty = True
        self.alive = True
        self._divergence: NondeterminismError | None = None
        self._task: asyncio.Task[None] | None = None
        self._steps: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry_waits: dict[int, tuple[int, asyncio.Future[None]]] = {}  # seq -> (due ms, waiter)
        self._began: dict[int, int] = {}  # seq -> wall ms its step body first started (``_stamp``)
        self._unreleased = 0
        self._patches: dict[str, bool] = {}  # ctx.patched answers of this attempt
        self.waits = Waits(self)
        self.waits.cancel_next = row.cancelled  # cancelled before it reached a durable await
        # What this attempt read, as (journal position, value) — folded into digests only when a
        # step needs one (``reads_before``) — and step results of earlier attempts salvaged from the
        # steps log, per position: one is taken only by a replay that read the same before it
        # (``_adopt_at``, decision 007 rule 7).
        self._reads: list[tuple[int, bytes | None]] = []
        self._folded: list[bytes] = []  # digest of _reads[:i + 1], for the first len(_folded)
        self._salvaged: dict[int, list[steps.Logged]] = {}
        self.span: Span | None = None  # this attempt's, when tracing (``_traced``)
        self._span_error: BaseException | str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, *, eager: bool = False) -> None:
        """Drive the handler in a task of its own; `eager`: run it right here up to its first
        suspension first — a handler that runs to completion without waiting costs no task at all."""
        name = f"invocation {self.invocation_id}"
        main = self._main() if self.host.tracer is None else self._traced(self.host.tracer)
        if eager:
            self._task = eager_task(main, name)
        else:
            self._task = asyncio.get_running_loop().create_task(main, name=name)

    def drop(self) -> None:
        """Stop driving this attempt: nothing it does from now on reaches the store."""
        self.alive = False
        for t in (self._task, *self._steps, *self._tasks):
            if t is not None and not t.done():
                t.cancel()

    def busy(self) -> bool:
        """A step body runs, or a result waits to be released. Helper tasks do not count: they only
        await durable futures (select, timeouts), and a replay rebuilds them."""
        return bool(self._steps) or self._unreleased > 0

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the cycle holding this invocation's current writes commits."""
        self._unreleased += 1

        def release() -> None:
            self._unreleased -= 1
            self.waits.last_active = time.monotonic()
            fn()
        self.host.after_commit(release)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """A helper task that dies with this invocation attempt. It must only await durable futures:
        it does not keep the invocation in memory (see ``busy``)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake_retry(self, seq: int, due_ms: int) -> None:
        """A step_retry timer of this invocation fired. Only the timer of the current backoff wakes
        the step: a stale one (an earlier attempt's, left from before a crash) must not cut a later
        backoff short."""
        wait = self._retry_waits.get(seq)
        if wait is not None and wait[0] == due_ms:
            del self._retry_waits[seq]
            if not wait[1].done():
                wait[1].set_result(None)

    async def _traced(self, tracer: Tracer) -> None:
        """``_main`` in a span of this attempt, the current span while the handler runs."""
        row = self.row
        self.span = tracing.start_attempt(
            tracer, name=self.handler.target, headers=row.input_headers, from_record=row.source_topic is not None,
            attributes={"processor.invocation.id": self.invocation_id, "processor.handler": self.handler.target,
                        "processor.key": self.key or "", "processor.partition": self.host.partition,
                        "processor.attempt": row.attempt})
        try:
            with tracing.current(self.span):
                await self._main()
        finally:
            tracing.end(self.span, self._span_error)

    def trace_headers(self) -> list[tuple[str, bytes]]:
        """Headers carrying this attempt's trace context (none when not tracing)."""
        return [] if self.span is None else tracing.inject(self.span)

    async def _main(self) -> None:
        ctx = _CONTEXTS[self.handler.kind](self)
        try:
            if self._decoded is not None:  # decoded (and loaded into its model) when the record arrived
                value = self._decoded[0]
            else:
                value = self.handler.input_shape.load(self._input_serde.deserialize(self.row.input))
        except Exception as e:  # checked when the record arrived; a serde change can still break it
            self.host.finished(self, result=None, failure=Failure(type="SerdeError", message=str(e)))
            return
        try:
            result = await self.handler.fn(ctx, value)
        except _Abandon:
            if self.alive and self._divergence is not None:
                self.alive = False
                self._span_error = self._divergence
                self.host.paused(self, str(self._divergence))
            return
        except asyncio.CancelledError:
            if not self.alive:
                return
            raise
        except TerminalError as e:
            if self.alive:
                self._finish(None, Failure(type=e.error_type, message=e.message))
            return
        except Exception as e:
            if self.alive:
                self.alive = False
                self._span_error = e
                self.host.backing_off(self, e)
            return
        if not self.alive:
            return
        try:
            out = None if result is None else self._serde.serialize(dump(result))
        except Exception as e:
            self._finish(None, Failure(type="SerdeError", message=f"handler result: {e}"))
            return
        self._finish(out, None)

    def _finish(self, result: bytes | None, failure: Failure | None) -> None:
        self.alive = False
        if failure is not None:
            self._span_error = f"{failure.type}: {failure.message}"
        for t in (*self._steps, *self._tasks):  # what the handler never awaited cannot outlive it
            t.cancel()
        self.host.finished(self, result=result, failure=failure)

    # -- journal plumbing ------------------------------------------------------------------------

    def journal_call(self, kind: EntryKind, name: str) -> Replay | Execute:
        if not self.alive:
            raise _Abandon()
        if self._salvaged:
            self._adopt_at(self.core.next_seq)
        try:
            return self.core.call(kind, name)
        except NondeterminismError as e:
            self._divergence = e
            raise _Abandon() from None

    def record(self, entry: Entry) -> None:
        if not self.alive:
            return
        if entry.kind in _TIMED:
            self._stamp(entry)
        self.core.record(entry)
        self.unsaved.append(entry)
        self.host.touched(self)

    def completed(self, entry: Entry) -> None:
        """A pending wait of this invocation completed (the partition saves it with the journal)."""
        self._stamp(entry)
        self.core.complete(entry)
        self.unsaved.append(entry)
        self.host.touched(self)

    def _stamp(self, entry: Entry) -> None:
        """Set the entry's timeline (fresh entries only: the caller just made it): it began when the
        journal's earlier state of it began (a step between attempts, a pending wait), when its step
        body first started, or now; it ended now if it is complete. Only actions that take time are
        stamped (``_TIMED``): a clock read per state read, write or emit cost ~5 % of a counter event."""
        now = int(self.host.wall_time() * 1000)
        if entry.started_ms is None:
            old = self.core.entry(entry.seq)
            began = self._began.pop(entry.seq, None)
            entry.started_ms = old.started_ms if old is not None and old.started_ms is not None else began or now
        if entry.completed and entry.ended_ms is None:
            entry.ended_ms = now

    def adopt(self, records: list[steps.Logged]) -> None:
        """Step results a restore salvaged from the steps log: a previous attempt's handler may have
        seen them, so this replay returns them too (saved with the journal like new ones) — if it
        read what that attempt read before the step."""
        for r in records:
            self._salvaged.setdefault(r.entry.seq, []).append(r)

    def _adopt_at(self, seq: int) -> None:
        """The handler reached journal position `seq`: take the salvaged result there whose attempt
        read what this one did. None does when this attempt read other values (its key's invocations
        ran in another order on this owner): the step runs again, and the values it computed from
        reads this run never made are dropped — the attempt that saw them never committed."""
        found = self._salvaged.pop(seq, None)
        if not found:
            return
        reads = self.reads_before(seq)
        for r in found:
            if r.fits(reads):
                if self.core.adopt(r.entry):
                    self.unsaved.append(r.entry)
                return
        log.warning("%s: the result of %s salvaged from the steps log was computed after other state "
                    "reads than this run's (its key's invocations ran in another order): it runs again",
                    self.invocation_id, found[0].entry.describe())

    def reads_before(self, seq: int) -> bytes:
        """The digest of the state this attempt read at journal positions before `seq`."""
        n = bisect.bisect_left(self._reads, seq, key=lambda r: r[0])
        folded = self._folded
        while len(folded) < n:
            at, value = self._reads[len(folded)]
            folded.append(steps.fold_read(folded[-1] if folded else steps.NO_READS, at, value))
        return folded[n - 1] if n else steps.NO_READS

    def decode_value(self, data: bytes | None) -> Any:
        return None if data is None else self._serde.deserialize(data)

    def encode_value(self, value: Any) -> bytes:
        return self._serde.serialize(value)

    def _done(self, value: Any) -> Awaitable[Any]:
        return _Ready(value)

    def _replayed(self, entry: Entry) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        if entry.failure is not None:
            fut.set_exception(_terminal(entry.failure))
        else:
            try:
                fut.set_result(self.decode_value(entry.value))
            except SerdeError as e:
                fut.set_exception(e)
        return fut

    def _state_key(self, name: str) -> bytes:
        if self._state_prefix is None:
            assert self.key is not None
            self._state_prefix = keys.state_prefix(self.handler.service, self.key)
        return keys.state_key_under(self._state_prefix, name)

    # -- the driver protocol used by contexts ---------------------------------------------------

    def random_seed(self) -> int:
        return self.core.random_seed()

    def patched(self, name: str) -> bool:
        """Decided once per name and attempt (``InvocationCore.patched``): a later call with the same
        name answers the same without a journal position, so one invocation never mixes old and new."""
        known = self._patches.get(name)
        if known is not None:
            return known
        if not self.alive:
            raise _Abandon()
        if self._salvaged:
            self._adopt_at(self.core.next_seq)
        d = self.core.patched(name)
        if isinstance(d, Execute):
            self.record(Entry(seq=d.seq, kind=EntryKind.PATCH, name=name))
            d = True
        self._patches[name] = d
        return d

    def resolve_target(self, target: Callable[..., Any] | str, key: str | None) -> HandlerDef:
        return self.host.resolve_target(target, key)

    def run(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
            retry: RetryPolicy | None) -> DurableFuture[Any]:
        d = self.journal_call(EntryKind.RUN, name)
        if isinstance(d, Replay):
            return DurableFuture(self._replayed(d.entry), self, d.seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.waits.cancel_next and d.retrying is None:  # a cancellation is delivered here instead
            self.waits.cancel_next = False
            self.host.cancel_delivered(self)
            self.record(Entry(seq=d.seq, kind=EntryKind.RUN, name=name, failure=CANCELLED))
            self.after_commit(_reject(fut, failure_error(CANCELLED)))
            return DurableFuture(fut, self, d.seq)
        is_async = inspect.iscoroutinefunction(fn)
        step = self._run_step(d.seq, name, fn, args, retry or self.host.app.config.step_retry, d.retrying, fut,
                              is_async)
        label = f"step {self.invocation_id}#{d.seq} {name}"
        if d.retrying is None and not is_async and STEPS.inline((self.handler.target, name)):
            task = eager_task(step, label)  # a body proved quick runs to its end right here: no task
        else:
            task = asyncio.get_running_loop().create_task(step, name=label)
        if task is not None:
            self._steps.add(task)
            task.add_done_callback(self._steps.discard)
        return DurableFuture(fut, self, d.seq)

    async def _run_step(self, seq: int, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                        policy: RetryPolicy, pending: Entry | None, fut: asyncio.Future[Any], is_async: bool) -> None:
        attempts = 0
        if pending is not None:
            attempts = pending.attempts
            assert pending.retry_at_ms is not None
            await self._wait_retry(seq, pending.retry_at_ms, attempts)
        elapsed_ms = 0
        if pending is None:
            self._began[seq] = int(self.host.wall_time() * 1000)
        while True:
            attempts += 1
            started = time.monotonic()
            token = _CURRENT_STEP.set((self.invocation_id, seq, name, attempts))
            self.host.bodies_running += 1
            span = None if self.span is None else tracing.start_step(self.host.tracer, self.span, name, attempts)
            error: BaseException | None = None
            retry_at: int | None = None
            try:
                with tracing.current(span):
                    if is_async:
                        result = await fn(*args)
                    else:
                        step = (self.handler.target, name)
                        if STEPS.inline(step):  # proved quick (processor/_engine/inline.py): no thread hop
                            t0 = time.perf_counter()
                            try:
                                result = fn(*args)
                            finally:
                                STEPS.ran(step, time.perf_counter() - t0, inline=True)
                        else:
                            result = await self._run_on_thread(step, fn, args)
                        if inspect.isawaitable(result):
                            result = await result
                data = None if result is None else self._serde.serialize(result)
                value = self.decode_value(data)  # the handler sees exactly what a replay will see
            except asyncio.CancelledError as e:
                error = e
                raise
            except (TerminalError, SerdeError) as e:
                error = e
                failure = Failure(type=getattr(e, "error_type", type(e).__name__), message=str(e))
                self._outcome(Entry(seq=seq, kind=EntryKind.RUN, name=name, failure=failure, attempts=attempts),
                              _reject(fut, _terminal(failure)))
                return
            except Exception as e:
                error = e
                elapsed_ms += int((time.monotonic() - started) * 1000)
                delay = policy.next_delay_ms(attempts, elapsed_ms)
                failure = Failure(type=type(e).__name__, message=str(e))
                if delay is None:
                    gave_up = Failure(type=StepFailedError.__name__,
                                      message=f"step {name!r} failed after {attempts} attempt(s): "
                                              f"{failure.type}: {failure.message}")
                    log.warning("invocation %s: %s", self.invocation_id, gave_up.message)
                    self._outcome(Entry(seq=seq, kind=EntryKind.RUN, name=name, failure=gave_up, attempts=attempts),
                                  _reject(fut, _terminal(gave_up)))
                    return
                elapsed_ms += delay
                retry_at = self.host.now_ms() + delay
                log.info("invocation %s: step %r attempt %d failed (%s: %s); retrying in %d ms",
                         self.invocation_id, name, attempts, failure.type, failure.message, delay)
                self.record(retry_entry(Entry(seq=seq, kind=EntryKind.RUN, name=name), attempts=attempts,
                                         retry_at_ms=retry_at, failure=failure))
            finally:
                self.host.body_ended()
                self.host.stats.step_ran(self.handler.target, name, time.monotonic() - started)
                _CURRENT_STEP.reset(token)
                if span is not None:
                    tracing.end(span, error)
            if retry_at is not None:  # the attempt failed and the step backs off: no body runs meanwhile
                await self._wait_retry(seq, retry_at, attempts)
                continue
            self._outcome(Entry(seq=seq, kind=EntryKind.RUN, name=name, value=data, attempts=attempts),
                          _resolve(fut, value))
            return

    async def _run_on_thread(self, step: tuple[str, str], fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """A synchronous body not proved quick: on a step thread, timed there."""
        def timed() -> tuple[Any, float]:
            t0 = time.perf_counter()
            result = fn(*args)
            return result, time.perf_counter() - t0
        call = contextvars.copy_context().run
        result, seconds = await asyncio.get_running_loop().run_in_executor(self.host.step_executor, call, timed)
        STEPS.ran(step, seconds, inline=False)
        return result

    def _outcome(self, entry: Entry, release: Callable[[], None]) -> None:
        """A step's final outcome, which no replay could produce again: durable before the handler
        sees it — by the steps log's acknowledgement where the partition can, else by the commit."""
        if not self.alive:
            return
        self._unreleased += 1  # busy until released: not suspended meanwhile

        def acked() -> None:
            self._unreleased -= 1
            self.waits.last_active = time.monotonic()
            release()
        if not self.host.log_step(self, entry, acked):
            self._unreleased -= 1
            self.record(entry)
            self.after_commit(release)

    async def _wait_retry(self, seq: int, retry_at_ms: int, attempt: int) -> None:
        if retry_at_ms <= self.host.now_ms():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._retry_waits[seq] = (retry_at_ms, waiter)
        if self.alive:
            self.host.schedule_timer(retry_at_ms, self.invocation_id, seq, TimerKind.STEP_RETRY, attempt)
        await waiter

    def emit(self, topic: str, value: Any, key: str | bytes | None,
             headers: Mapping[str, str | bytes] | None) -> None:
        # Only an emit the journal does not hold yet fails: one it holds was produced when it ran.
        if not self.host.topic_exists(topic) and self.alive and self.core.entry(self.core.next_seq) is None:
            raise UnknownTopicError(topic)
        d = self.journal_call(EntryKind.EMIT, topic)
        if isinstance(d, Replay):
            return
        data = bytes(value) if isinstance(value, (bytes, bytearray)) else self._serde.serialize(value)
        kb = key.encode() if isinstance(key, str) else key
        hs = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers.items()] if headers else []
        if self.span is not None:
            hs = tracing.inject(self.span, hs)
        self.record(Entry(seq=d.seq, kind=EntryKind.EMIT, name=topic))
        if self.alive:
            self.host.produce(topic, kb, data, hs)

    def time(self) -> Awaitable[float]:
        d = self.journal_call(EntryKind.TIME, "time")
        if isinstance(d, Replay):
            return self._replayed(d.entry)
        now = self.host.wall_time()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outcome(Entry(seq=d.seq, kind=EntryKind.TIME, name="time", value=orjson.dumps(now)), _resolve(fut, now))
        return fut

    def _read_journaled(self, kind: EntryKind, name: str, read: Callable[[], bytes | None]) -> Awaitable[Any]:
        d = self.journal_call(kind, name)
        if isinstance(d, Replay):
            self._reads.append((d.seq, d.entry.value))
            return self._replayed(d.entry)
        raw = read()
        self._reads.append((d.seq, raw))
        self.record(Entry(seq=d.seq, kind=kind, name=name, value=raw))
        value = self.decode_value(raw)
        if self.handler.kind.exclusive:
            # No other writer of this key runs concurrently, and the entry commits before any later
            # write of this invocation, so a replay reads the same value: no need to wait.
            return self._done(value)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.after_commit(_resolve(fut, value))
        return fut

    def get(self, name: str) -> Awaitable[Any]:
        return self._read_journaled(EntryKind.GET, name, lambda: self.host.read(self._state_key(name)))

    def state_keys(self) -> Awaitable[list[str]]:
        def read() -> bytes:
            assert self.key is not None
            names = [keys.parse_state_key(k)[2]
                     for k, _ in self.host.scan(keys.state_prefix(self.handler.service, self.key))]
            return self._serde.serialize(sorted(names))
        return self._read_journaled(EntryKind.STATE_KEYS, "", read)

    def set(self, name: str, value: Any) -> None:
        d = self.journal_call(EntryKind.SET, name)
        if isinstance(d, Execute):
            data = self._serde.serialize(value)
            self.record(Entry(seq=d.seq, kind=EntryKind.SET, name=name))
            if self.alive:
                self.host.write(self._state_key(name), data)

    def clear(self, name: str) -> None:
        d = self.journal_call(EntryKind.CLEAR, name)
        if isinstance(d, Execute):
            self.record(Entry(seq=d.seq, kind=EntryKind.CLEAR, name=name))
            if self.alive:
                self.host.write(self._state_key(name), None)

    def clear_all(self) -> None:
        d = self.journal_call(EntryKind.CLEAR_ALL, "")
        if isinstance(d, Execute):
            assert self.key is not None
            self.record(Entry(seq=d.seq, kind=EntryKind.CLEAR_ALL, name=""))
            if self.alive:
                for k, _ in list(self.host.scan(keys.state_prefix(self.handler.service, self.key))):
                    self.host.write(k, None)

    # -- durable waits (processor/_engine/waits.py) ---------------------------------------------

    def sleep(self, duration: timedelta) -> DurableFuture[None]:
        return self.waits.sleep(duration)

    def call(self, target: Target, arg: Any, key: str | None) -> DurableFuture[Any]:
        return self.waits.call(target, arg, key)

    def send(self, target: Target, arg: Any, key: str | None, delay: timedelta | None) -> str:
        return self.waits.send(target, arg, key, delay)

    def awakeable(self) -> tuple[str, DurableFuture[Any]]:
        return self.waits.awakeable()

    def complete_awakeable(self, awakeable_id: str, value: Any, reason: str | None) -> None:
        self.waits.complete_awakeable(awakeable_id, value, reason)

    def cancel_invocation(self, invocation_id: str) -> None:
        self.waits.cancel_invocation(invocation_id)

    def attach(self, invocation_id: str) -> DurableFuture[Any]:
        return self.waits.attach(invocation_id)

    def promise_await(self, name: str) -> DurableFuture[Any]:
        return self.waits.promise_await(name)

    def promise_peek(self, name: str) -> DurableFuture[Any]:
        return self.waits.promise_peek(name)

    def promise_complete(self, name: str, value: Any, failure: str | None) -> None:
        self.waits.promise_complete(name, value, failure)

    def select(self, futures: Mapping[str, DurableFuture[Any]]) -> DurableFuture[tuple[str, Any]]:
        return self.waits.select(futures)

    def with_timeout(self, fut: DurableFuture[Any], timeout: timedelta) -> DurableFuture[Any]:
        return self.waits.with_timeout(fut, timeout)
