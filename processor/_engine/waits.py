"""Durable waits of an invocation: timers, calls, one-way sends, awakeables, workflow promises,
``select`` and timeouts, cancellation, and what a handler does to other invocations (complete their
awakeables, cancel them, attach to their outcome).

A wait is journaled as a *pending* entry when called; its completion (a timer firing, a response or
an awakeable command arriving, a promise resolved) is written into that entry by the partition
worker and released to the handler only after it commits. While every wait of an invocation is
pending and nothing else runs, the invocation can leave memory (suspension) and be replayed later.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, cast

import orjson

from processor._app import HandlerRef, Target
from processor._engine import routing
from processor._engine.commands import CommandKind, InboxCommand
from processor._engine.core import Entry, EntryKind, Failure, Replay
from processor._errors import TerminalError, terminal_error
from processor._futures import DurableFuture
from processor._models import dump
from processor._serde import JsonSerde
from processor.timers import TimerKind

if TYPE_CHECKING:
    from processor._engine.invocation import InvocationRuntime

CANCELLED = Failure(type="Cancelled", message="the invocation was cancelled")


def failure_error(f: Failure) -> TerminalError:
    return terminal_error(f.type, f.message)


class Waits:
    """The durable-wait half of an invocation runtime (one per runtime)."""

    def __init__(self, rt: InvocationRuntime) -> None:
        # A weak reference: a runtime and its waits in a cycle would leave every finished
        # invocation to the cyclic garbage collector (a counter event's runtime is freed at once).
        self.rt = cast("InvocationRuntime", weakref.proxy(rt))
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.decoders: dict[int, Callable[[bytes | None], Any]] = {}
        self.cancel_next = False
        self.last_active = time.monotonic()

    # -- plumbing --------------------------------------------------------------------------------

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _settle(self, fut: asyncio.Future[Any], entry: Entry, decode: Callable[[bytes | None], Any]) -> None:
        if fut.done():
            return
        if entry.failure is not None:
            fut.set_exception(failure_error(entry.failure))
        else:
            try:
                fut.set_result(decode(entry.value))
            except Exception as e:
                fut.set_exception(e)

    def wait(self, kind: EntryKind, name: str, start: Callable[[int], Entry | None],
             decode: Callable[[bytes | None], Any] | None = None) -> DurableFuture[Any]:
        """Journal a durable wait. `start(seq)` performs its side effects and returns the pending entry
        to journal (or an already completed one)."""
        rt = self.rt
        decode = decode or rt.decode_value
        d = rt.journal_call(kind, name)
        fut = self._future()
        self.last_active = time.monotonic()
        if isinstance(d, Replay):
            self._settle(fut, d.entry, decode)
            return DurableFuture(fut, rt, d.seq)
        if d.retrying is None:  # past the journal: start it for real
            entry = start(d.seq)
            if entry is None:
                return DurableFuture(fut, rt, d.seq)
            rt.record(entry)
            if not entry.pending:
                done = entry
                rt.after_commit(lambda: self._settle(fut, done, decode))
                return DurableFuture(fut, rt, d.seq)
        seq = d.seq
        self.pending[seq] = fut

        def forget(_f: asyncio.Future[Any]) -> None:
            self.pending.pop(seq, None)
        fut.add_done_callback(forget)
        self.decoders[d.seq] = decode
        if self.cancel_next:  # a cancellation waiting for the next durable await: this one
            self.cancel()
        return DurableFuture(fut, rt, d.seq)

    def completed(self, entry: Entry) -> None:
        """Pending entry ``entry.seq`` completed (the partition saves it with the journal)."""
        self.rt.completed(entry)
        self.last_active = time.monotonic()
        fut = self.pending.get(entry.seq)
        if fut is not None:
            decode = self.decoders.pop(entry.seq, self.rt.decode_value)
            self.rt.after_commit(lambda: self._settle(fut, entry, decode))

    def suspendable(self, idle_s: float) -> bool:
        """Only durable waits outstanding, nothing running, quiet for `idle_s`."""
        rt = self.rt
        return (bool(self.pending) and not rt.busy() and time.monotonic() - self.last_active >= idle_s)

    # -- the actions -----------------------------------------------------------------------------

    def sleep(self, duration: timedelta) -> DurableFuture[None]:
        rt = self.rt

        def start(seq: int) -> Entry:
            due = rt.host.now_ms() + max(0, int(duration.total_seconds() * 1000))
            rt.host.schedule_timer(due, rt.invocation_id, seq, TimerKind.SLEEP)
            return Entry(seq=seq, kind=EntryKind.SLEEP, name="sleep", pending=True, due_ms=due)
        return self.wait(EntryKind.SLEEP, "sleep", start, lambda _v: None)

    def call(self, target: Target, arg: Any, key: str | None) -> DurableFuture[Any]:
        rt = self.rt
        h = rt.host.resolve_target(target, key)

        def start(seq: int) -> Entry:
            callee = rt.host.invoke(h, arg, key, seed=("call", rt.invocation_id, str(seq)),
                                    caller=(rt.invocation_id, seq), headers=rt.trace_headers())
            return Entry(seq=seq, kind=EntryKind.CALL, name=h.target, pending=True, value=callee.encode())
        shape = target.output_shape if isinstance(target, HandlerRef) and target.output_type is not None \
            else h.output_shape
        if not shape.typed:
            return self.wait(EntryKind.CALL, h.target, start)
        return self.wait(EntryKind.CALL, h.target, start, lambda data: shape.load(rt.decode_value(data)))

    def send(self, target: Target, arg: Any, key: str | None,
             delay: timedelta | None) -> str:
        rt = self.rt
        h = rt.host.resolve_target(target, key)
        d = rt.journal_call(EntryKind.SEND, h.target)
        if isinstance(d, Replay):
            return (d.entry.value or b"").decode()
        delay_ms = None if delay is None else max(0, int(delay.total_seconds() * 1000))
        callee = rt.host.invoke(h, arg, key, seed=("send", rt.invocation_id, str(d.seq)), caller=None,
                                delay_ms=delay_ms, timer_owner=(rt.invocation_id, d.seq),
                                headers=rt.trace_headers())
        rt.record(Entry(seq=d.seq, kind=EntryKind.SEND, name=h.target, value=callee.encode()))
        return callee

    def awakeable(self) -> tuple[str, DurableFuture[Any]]:
        rt = self.rt
        seq = rt.core.next_seq
        fut = self.wait(EntryKind.AWAKEABLE, "awakeable",
                        lambda s: Entry(seq=s, kind=EntryKind.AWAKEABLE, name="awakeable", pending=True),
                        _json_or_none)
        return routing.awakeable_id(rt.invocation_id, seq), fut

    # -- acting on other invocations: one journal entry and one inbox command, committed together ---

    def complete_awakeable(self, awakeable_id: str, value: Any, reason: str | None) -> None:
        """Resolve (`reason` None) or reject awakeable `awakeable_id`: a command to its invocation's
        partition, sent with the entry that records it, so a replay never sends it again."""
        rt = self.rt
        kind = EntryKind.RESOLVE_AWAKEABLE if reason is None else EntryKind.REJECT_AWAKEABLE
        d = rt.journal_call(kind, awakeable_id)
        if isinstance(d, Replay):
            _raise_failed(d.entry)
            return
        try:
            inv, _ = routing.parse_awakeable_id(awakeable_id)
            p = self._partition_of(inv)
        except ValueError as e:
            self._refuse(Entry(seq=d.seq, kind=kind, name=awakeable_id), "BadAwakeable", str(e))
        if reason is None:
            cmd = InboxCommand(kind=CommandKind.RESOLVE_AWAKEABLE, target_id=awakeable_id,
                               payload=JsonSerde().serialize(dump(value)))
        else:
            cmd = InboxCommand(kind=CommandKind.REJECT_AWAKEABLE, target_id=awakeable_id,
                               failure=Failure(type="AwakeableRejected", message=reason))
        rt.record(Entry(seq=d.seq, kind=kind, name=awakeable_id))
        rt.host.send_command(p, inv, cmd.encode())

    def cancel_invocation(self, invocation_id: str) -> None:
        """Cancel another invocation (or this one): a ``cancel`` command, sent once."""
        rt = self.rt
        d = rt.journal_call(EntryKind.CANCEL, invocation_id)
        if isinstance(d, Replay):
            _raise_failed(d.entry)
            return
        try:
            self._partition_of(invocation_id)
        except ValueError as e:
            self._refuse(Entry(seq=d.seq, kind=EntryKind.CANCEL, name=invocation_id), "BadInvocationId", str(e))
        rt.record(Entry(seq=d.seq, kind=EntryKind.CANCEL, name=invocation_id))
        rt.host.cancel_callee(invocation_id)

    def attach(self, invocation_id: str) -> DurableFuture[Any]:
        """Wait for another invocation's outcome: an ``attach`` command naming this entry makes the
        target's partition subscribe it (as a call's caller) and answer it with a ``response``."""
        rt = self.rt

        def start(seq: int) -> Entry:
            entry = Entry(seq=seq, kind=EntryKind.ATTACH, name=invocation_id, pending=True)
            try:
                p = self._partition_of(invocation_id)
            except ValueError as e:
                return replace(entry, pending=False, failure=Failure(type="BadInvocationId", message=str(e)))
            if invocation_id == rt.invocation_id:
                return replace(entry, pending=False, failure=Failure(
                    type="BadInvocationId", message="an invocation cannot attach to itself (it would wait forever)"))
            rt.host.send_command(p, invocation_id, InboxCommand(
                kind=CommandKind.ATTACH, invocation_id=invocation_id, caller_id=rt.invocation_id, caller_seq=seq,
                caller_partition=rt.host.partition).encode())
            return entry
        return self.wait(EntryKind.ATTACH, invocation_id, start)

    def _partition_of(self, invocation_id: str) -> int:
        """The partition of `invocation_id`, which must be one of the app's (a command to another
        would fail the cycle's transaction, again on every replay)."""
        p = routing.partition_of(invocation_id)
        total = self.rt.host.partitions_total
        if not 0 <= p < total:
            raise ValueError(f"{invocation_id!r} names partition {p}; the app has {total}")
        return p

    def _refuse(self, entry: Entry, error_type: str, message: str) -> NoReturn:
        """Journal `entry` as failed (a replay raises the same) and raise it as a TerminalError."""
        failure = Failure(type=error_type, message=message)
        self.rt.record(replace(entry, failure=failure))
        raise failure_error(failure)

    def promise_await(self, name: str) -> DurableFuture[Any]:
        rt = self.rt

        def start(seq: int) -> Entry:
            done = rt.host.promise_state(rt, name)
            if done is not None:
                return Entry(seq=seq, kind=EntryKind.PROMISE, name=name, value=done[0], failure=done[1])
            rt.host.promise_wait(rt, name, seq)
            return Entry(seq=seq, kind=EntryKind.PROMISE, name=name, pending=True)
        return self.wait(EntryKind.PROMISE, name, start)

    def promise_peek(self, name: str) -> DurableFuture[Any]:
        rt = self.rt

        def start(seq: int) -> Entry:
            done = rt.host.promise_state(rt, name)
            value, failure = done if done is not None else (None, None)
            return Entry(seq=seq, kind=EntryKind.PROMISE_PEEK, name=name, value=value, failure=failure)
        return self.wait(EntryKind.PROMISE_PEEK, name, start)

    def promise_complete(self, name: str, value: Any, failure: str | None) -> None:
        rt = self.rt
        d = rt.journal_call(EntryKind.PROMISE_COMPLETE, name)
        if isinstance(d, Replay):
            if d.entry.failure is not None:
                raise failure_error(d.entry.failure)
            return
        data = None if failure is not None else rt.encode_value(value)
        fail = None if failure is None else Failure(type="PromiseRejected", message=failure)
        if not rt.host.promise_complete(rt, name, data, fail):
            err = Failure(type="PromiseAlreadyCompleted", message=f"promise {name!r} was already completed")
            rt.record(Entry(seq=d.seq, kind=EntryKind.PROMISE_COMPLETE, name=name, failure=err))
            raise failure_error(err)
        rt.record(Entry(seq=d.seq, kind=EntryKind.PROMISE_COMPLETE, name=name))

    def select(self, futures: Mapping[str, DurableFuture[Any]]) -> DurableFuture[tuple[str, Any]]:
        rt = self.rt
        names = list(futures)
        d = rt.journal_call(EntryKind.SELECT, ",".join(names))
        out = self._future()

        async def finish(winner: str) -> None:
            try:
                out.set_result((winner, await futures[winner]))
            except Exception as e:
                out.set_exception(e)

        if isinstance(d, Replay):
            rt.spawn(finish((d.entry.value or b"").decode()))
            return DurableFuture(out, rt, d.seq)

        async def race() -> None:
            # Wait on the futures themselves: wrapping them in tasks would leave a loser's error
            # unretrieved ("Task exception was never retrieved").
            waiting = {f._future: n for n, f in futures.items()}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            winner = next(n for n in names if any(waiting[t] == n for t in done))
            rt.record(Entry(seq=d.seq, kind=EntryKind.SELECT, name=",".join(names), value=winner.encode()))
            rt.after_commit(lambda: rt.spawn(finish(winner)))
        rt.spawn(race())
        return DurableFuture(out, rt, d.seq)

    def with_timeout(self, fut: DurableFuture[Any], timeout: timedelta) -> DurableFuture[Any]:
        rt = self.rt
        race = self.select({"value": fut, "timeout": self.sleep(timeout)})
        out = self._future()

        async def pick() -> None:
            try:
                winner, value = await race
            except Exception as e:
                out.set_exception(e)
                return
            if winner == "timeout":
                out.set_exception(TimeoutError(f"timed out after {timeout}"))
            else:
                out.set_result(value)
        rt.spawn(pick())
        return DurableFuture(out, rt, race.seq)

    # -- cancellation ----------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Deliver a cancellation: fail every pending wait now, or else the next durable action (the
        row keeps the cancellation until then, across restarts). True if delivered now."""
        rt = self.rt
        waiting = [e for e in (rt.core.entry(seq) for seq in sorted(self.pending)) if e is not None and e.pending]
        if not waiting:  # nothing pending, or only completions not released yet
            self.cancel_next = True
            return False
        self.cancel_next = False
        rt.host.cancel_delivered(rt)
        for entry in waiting:
            if entry.kind is EntryKind.CALL and entry.value:
                rt.host.cancel_callee(entry.value.decode())
            rt.host.complete_entry(rt.invocation_id, replace(entry, pending=False, failure=CANCELLED))
        return True


def _raise_failed(entry: Entry) -> None:
    if entry.failure is not None:
        raise failure_error(entry.failure)


def _json_or_none(data: bytes | None) -> Any:
    return None if data is None else orjson.loads(data)
