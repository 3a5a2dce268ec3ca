"""What a partition worker says to and hears from other partitions and the outside world: inbox
commands (invoke, forward, response, awakeables, attach, cancel, kill, purge, retry), results for Clients,
completions of durable waits, workflow promises, and suspension of idle invocations."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from processor import schemas
from processor._app import App, Binding, HandlerDef, HandlerKind, HandlerRef, Target
from processor._engine import forwarding, routing
from processor._engine.commands import CommandKind, InboxCommand
from processor._engine.core import Entry, EntryKind, Failure, decode_journal, encode_chunk, invocation_id_for_record
from processor._engine.records import InRecord, InvocationRow, OutRecord, Status
from processor._errors import TerminalError
from processor._models import dump
from processor.schemas import SchemaError
from processor.state import keys
from processor.timers import TimerKind, encode_timer

if TYPE_CHECKING:
    from processor._engine.invocation import InvocationRuntime
    from processor.state.overlay import PartitionState
    from processor.timers import TimerIndex

log = logging.getLogger("processor.partition")

KILLED = Failure(type="Killed", message="the invocation was killed")
ALIAS_SEQ = 0xFFFFFFFF  # subscriber seq of an alias: publish the outcome under the alias id


def failure_dict(f: Failure | None) -> dict[str, str] | None:
    return None if f is None else {"type": f.type, "message": f.message}


def failure_of(d: dict[str, str] | None) -> Failure | None:
    return None if d is None else Failure(type=d["type"], message=d["message"])


class Messaging:
    """Mixed into PartitionWorker; everything here runs on the event loop."""

    app: App
    partition: int
    partitions_total: int
    state: PartitionState
    timers: TimerIndex
    runtimes: dict[str, InvocationRuntime]
    _queues: dict[tuple[str, str], deque[str]]
    _queued_rows: dict[str, InvocationRow]
    _durable: set[str]
    _outputs: list[OutRecord]
    _on_work: Callable[[], None]
    forwards: forwarding.ForwardStats = forwarding.FORWARDS

    if TYPE_CHECKING:
        def write(self, key: bytes, value: bytes | None) -> None: ...
        def now_ms(self) -> int: ...
        def wall_time(self) -> float: ...
        def after_commit(self, fn: Callable[[], None]) -> None: ...
        def dead_letter(self, msg: InRecord, reason: str, error_class: str) -> None: ...
        def create(self, row: InvocationRow, h: HandlerDef) -> None: ...
        def admit(self, msg: InRecord, binding: Binding) -> None: ...
        def start(self, row: InvocationRow) -> None: ...
        def finish_row(self, row: InvocationRow, result: bytes | None, failure: Failure | None, *,
                       rt: InvocationRuntime | None = None) -> None: ...
        def save(self, rt: InvocationRuntime, row: InvocationRow | None = None) -> None: ...
        def _purge(self, invocation_id: str) -> None: ...
        def touched(self, rt: InvocationRuntime) -> None: ...
        def schedule_timer(self, due_ms: int, invocation_id: str, seq: int, kind: TimerKind,
                           attempt: int = 0) -> None: ...

    # -- out ---------------------------------------------------------------------------------------

    def send_command(self, partition: int, record_key: str, data: bytes) -> None:
        self._outputs.append(OutRecord(topic=self.app.inbox_topic, partition=partition,
                                       key=record_key.encode(), value=data))
        self._on_work()

    def forward_if_foreign(self, msg: InRecord, binding: Binding) -> bool:
        """Forward bound record `msg` to the partition that owns its key if that is not this one; the
        command commits with the record's offset, so it is forwarded exactly once."""
        to = forwarding.owner(msg.key, binding.handler.keyed, self.partition, self.partitions_total)
        if to is None or msg.key is None:
            return False
        data = forwarding.forward_command(topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                          key=msg.key, value=msg.value, headers=msg.headers)
        self._outputs.append(OutRecord(topic=self.app.inbox_topic, partition=to, key=msg.key, value=data))
        self.forwards.add(msg.topic, msg.key, self.partition, to, self.app.inbox_topic)
        self._on_work()
        return True

    def resolve_target(self, target: Target, key: str | None) -> HandlerDef:
        if isinstance(target, HandlerRef):
            target = target.target
        h = self.app.handler(target) if isinstance(target, str) else self.app.handler_for(target)
        if h is None:
            raise TerminalError(f"no handler {target!r} in app {self.app.name}")
        if h.keyed and key is None:
            raise TerminalError(f"{h.target} is keyed: call it with key=...")
        return h

    def callee_id(self, h: HandlerDef, key: str | None, seed: tuple[str, ...]) -> tuple[str, int]:
        if h.kind is HandlerKind.WORKFLOW_RUN:
            assert key is not None
            p = routing.target_partition(key, "", self.partitions_total)
            return routing.invocation_id(p, "workflow", h.service, key), p
        p = routing.target_partition(key, "\0".join(seed), self.partitions_total)
        return routing.invocation_id(p, *seed), p

    def invoke(self, h: HandlerDef, arg: Any, key: str | None, *, seed: tuple[str, ...],
               caller: tuple[str, int] | None, delay_ms: int | None = None,
               timer_owner: tuple[str, int] | None = None, headers: list[tuple[str, bytes]] | None = None) -> str:
        """Invoke `h` exactly once per `seed`; `headers` go to the callee as its input headers (trace context)."""
        serde = h.input_serde or self.app.config.serde
        callee, p = self.callee_id(h, key, seed)
        data = InboxCommand(kind=CommandKind.INVOKE, invocation_id=callee, service=h.service, handler=h.name,
                            key=key if h.keyed else None, payload=serde.serialize(dump(arg)),
                            caller_id=caller[0] if caller else None, caller_seq=caller[1] if caller else -1,
                            caller_partition=self.partition if caller else -1, headers=headers or []).encode()
        if delay_ms:
            owner = timer_owner or (callee, 0)
            # a SEND timer's `attempt` carries the target partition
            self.timers.schedule(_timer(self.now_ms() + delay_ms, owner, encode_timer(TimerKind.SEND, p, data)))
            self._on_work()
        else:
            self.send_command(p, key or callee, data)
        return callee

    def cancel_callee(self, callee_id: str) -> None:
        self.send_command(routing.partition_of(callee_id), callee_id,
                          InboxCommand(kind=CommandKind.CANCEL, invocation_id=callee_id).encode())

    def answer(self, row: InvocationRow, h: HandlerDef | None) -> None:
        """A finished invocation answers every caller waiting for it and, if asked, the Clients.
        `h`: its handler (None: not in this deploy)."""
        if self._may_have_subscribers(row, h):
            self._answer_subscribers(row)
        if row.notify:
            self.publish_result(row)

    def _may_have_subscribers(self, row: InvocationRow, h: HandlerDef | None) -> bool:
        """Callers subscribe by invoking an id: a command's invocation, or a workflow's run. A topic
        record's invocation has an id no invoke can name. `h`: its handler (None: not in this deploy)."""
        if row.source_topic is None or row.notify:  # notify: a handler's ctx.attach subscribed (_attach_caller)
            return True
        return h is None or h.kind is HandlerKind.WORKFLOW_RUN

    def _answer_subscribers(self, row: InvocationRow) -> None:
        prefix = keys.subscriber_prefix(row.id)
        for k, v in list(self.state.scan(prefix)):
            _, caller, seq = keys.parse_subscriber_key(k)
            if seq == ALIAS_SEQ:
                self._answer_alias(row, caller)
            else:
                self._respond(int(v.decode()), caller, seq, row.result, row.failure)
            self.write(k, None)

    def _respond(self, partition: int, caller: str, seq: int, result: bytes | None, failure: Failure | None) -> None:
        """Answer the pending call or attach at `seq` of invocation `caller`."""
        self.send_command(partition, caller, InboxCommand(kind=CommandKind.RESPONSE, invocation_id=caller, seq=seq,
                                                          payload=result, failure=failure).encode())

    def publish_result(self, row: InvocationRow | None, invocation_id: str | None = None) -> None:
        inv = row.id if row else invocation_id
        assert inv is not None
        status = row.status.value if row and row.status.terminal else "unknown"
        data = schemas.encode("InvocationResult", {
            "invocation_id": inv, "status": status, "value": row.result if row else None,
            "failure": failure_dict(row.failure) if row else None})
        self._outputs.append(OutRecord(topic=self.app.results_topic, partition=self.partition,
                                       key=inv.encode(), value=data))
        self._on_work()

    # -- in ----------------------------------------------------------------------------------------

    def on_command(self, msg: InRecord) -> None:
        try:
            cmd = InboxCommand.decode(msg.value or b"")
        except SchemaError as e:
            self.dead_letter(msg, f"undecodable inbox command: {e}", "SchemaError")
            return
        handler = _COMMANDS.get(cmd.kind)
        if handler is None:
            self.dead_letter(msg, f"unknown inbox command {cmd.kind!r}", "UnknownCommand")
            return
        problem = handler(self, msg, cmd)
        if problem is not None:
            self.dead_letter(msg, problem[1], problem[0])

    def _row(self, invocation_id: str) -> InvocationRow | None:
        """The invocation's current row: in memory (running, or queued and never saved), else stored."""
        rt = self.runtimes.get(invocation_id)
        if rt is not None:
            return rt.row
        row = self._queued_rows.get(invocation_id)
        if row is not None:
            return row
        data = self.state.get(keys.invocation_key(invocation_id))
        return None if data is None else InvocationRow.decode(data)

    def _journal(self, invocation_id: str) -> list[Entry]:
        """The journal of an invocation that is not in memory."""
        return decode_journal(v for _, v in self.state.scan(keys.journal_prefix(invocation_id)))

    def _append_journal(self, invocation_id: str, entries: list[Entry]) -> None:
        """Add a journal record to an invocation that is not in memory."""
        last = None
        for k, _ in self.state.scan(keys.journal_prefix(invocation_id)):
            last = k
        n = 0 if last is None else keys.parse_journal_key(last)[1] + 1
        self.write(keys.journal_key(invocation_id, n), encode_chunk(entries))

    def _cmd_invoke(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        if cmd.service is None or cmd.handler is None:
            return "BadCommand", "an invoke command names no service or no handler"
        target = f"{cmd.service}/{cmd.handler}"
        inv = cmd.invocation_id or invocation_id_for_record(msg.topic, self.partition, msg.offset)
        try:
            home = routing.partition_of(inv)
        except ValueError as e:
            return "BadInvocationId", str(e)
        if home != self.partition:
            return "WrongPartition", f"invocation {inv} belongs to partition {home}"
        h = self.app.handler(target)
        refused: Failure | None = None
        if h is None:
            refused = Failure(type="UnknownHandler", message=f"no handler {target} in app {self.app.name}")
        elif h.keyed and cmd.key is None:
            refused = Failure(type="MissingKey", message=f"{target} is keyed: invoke it with a key")
        problem = None if refused is None else (refused.type, refused.message)
        notify = cmd.notify
        if h is not None and refused is None and h.kind is HandlerKind.WORKFLOW_RUN:
            run_id, home = self.callee_id(h, cmd.key, ())
            if run_id != inv:  # a Client's own id for the run: make it an alias of the key's one run
                if home != self.partition:
                    return "WrongPartition", f"workflow run {run_id} belongs to partition {home}"
                self._alias(inv, run_id)
                inv, notify = run_id, False  # the alias publishes the outcome under its own id
        if cmd.caller_id is not None:
            self.write(keys.subscriber_key(inv, cmd.caller_id, cmd.caller_seq),
                       str(cmd.caller_partition).encode())
        existing = self._row(inv)
        if existing is not None:  # the same invocation again (idempotency key, workflow run, redelivery)
            self._attach(existing, notify=notify)
            return problem
        row = InvocationRow(
            id=inv, service=cmd.service, handler=cmd.handler,
            key=cmd.key if h is None or h.keyed else None,
            status=Status.QUEUED, input=cmd.payload or b"", created_ms=self.now_ms(),
            input_headers=dict(cmd.headers), caller_id=cmd.caller_id, caller_seq=cmd.caller_seq,
            caller_partition=cmd.caller_partition,
            notify=notify, idempotency_key=cmd.idempotency_key)
        if refused is not None:
            # Besides the DLQ record, fail it for good: its caller or Client gets the reason at once,
            # and `result(id)` (or the same command again) finds it while it is retained.
            self.finish_row(row, None, refused)
            return problem
        assert h is not None  # refused otherwise
        self.create(row, h)
        return None

    # -- aliases: other ids of an invocation (a Client's id for a workflow run) ---------------------

    def _alias(self, alias: str, target: str) -> None:
        """Make `alias` name invocation `target` (same partition): attach, cancel and kill by it reach
        the target, and the target's outcome is published under it too."""
        self.write(keys.dedup_key(alias), target.encode())
        row = self._row(target)
        if row is not None and row.status.terminal:
            self._answer_alias(row, alias)
        else:
            self.write(keys.subscriber_key(target, alias, ALIAS_SEQ), str(self.partition).encode())

    def _answer_alias(self, row: InvocationRow, alias: str) -> None:
        """Publish finished `row`'s outcome under `alias`, which is forgotten with the row's retention."""
        from processor._engine.partition import INVOCATION_SEQ

        self.publish_result(replace(row, id=alias))
        retention = int(self.app.config.retention.total_seconds() * 1000)
        self.schedule_timer(self.now_ms() + retention, alias, INVOCATION_SEQ, TimerKind.PURGE)

    def resolve_alias(self, invocation_id: str) -> str:
        """The invocation `invocation_id` names: itself, or the target of an alias."""
        if self.state.get(keys.invocation_key(invocation_id)) is not None:
            return invocation_id
        target = self.state.get(keys.dedup_key(invocation_id))
        return invocation_id if target is None else target.decode()

    def forget_alias(self, alias: str) -> None:
        if self.state.get(keys.dedup_key(alias)) is not None:
            self.write(keys.dedup_key(alias), None)

    def _attach(self, row: InvocationRow, *, notify: bool) -> None:
        if row.status.terminal:
            self.answer(replace(row, notify=notify), self.app.handler(row.target))
        elif notify and not row.notify:
            self._update_row(row.id, lambda r: replace(r, notify=True))

    def _update_row(self, invocation_id: str, change: Callable[[InvocationRow], InvocationRow]) -> None:
        rt = self.runtimes.get(invocation_id)
        if rt is not None:
            rt.row = change(rt.row)
            rt.row_dirty = True
            self.touched(rt)
            return
        if invocation_id in self._queued_rows:
            self._queued_rows[invocation_id] = change(self._queued_rows[invocation_id])
            return
        row = self._row(invocation_id)
        if row is not None:
            self.write(keys.invocation_key(row.id), change(row).encode())

    def _cmd_attach(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        inv = cmd.invocation_id or ""
        target = self.resolve_alias(inv)
        row = self._row(target)
        if cmd.caller_id is not None:
            return self._attach_caller(row, inv, cmd.caller_id, cmd.caller_seq, cmd.caller_partition)
        if row is None:
            self.publish_result(None, inv)
        elif target != inv:
            self._alias(inv, target)
        else:
            self._attach(row, notify=True)
        return None

    def _attach_caller(self, row: InvocationRow | None, inv: str, caller: str, seq: int,
                       partition: int) -> tuple[str, str] | None:
        """A handler's ``ctx.attach(inv)``: answer its pending entry with `row`'s outcome, at once if
        it has one, else when it finishes (a subscriber row, as a call's caller gets)."""
        if not 0 <= partition < self.partitions_total:
            return "BadCommand", f"attach from partition {partition}: the app has {self.partitions_total}"
        if row is None:
            self._respond(partition, caller, seq, None, Failure(
                type="InvocationNotFound", message=f"no invocation {inv} in app {self.app.name} (never created, "
                                                   "purged after its retention, or a delayed send not due yet)"))
        elif row.status.terminal:
            self._respond(partition, caller, seq, row.result, row.failure)
        else:
            self.write(keys.subscriber_key(row.id, caller, seq), str(partition).encode())
            if not self._may_have_subscribers(row, self.app.handler(row.target)):
                # A topic record's invocation answers subscribers only when its row says so: `notify`
                # (which also publishes its outcome on <app>.results, as a Client's attach does).
                self._update_row(row.id, lambda r: replace(r, notify=True))
        return None

    def _cmd_forward(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        rec = InRecord(topic=cmd.source_topic or "", partition=cmd.source_partition,
                       offset=cmd.source_offset, key=cmd.record_key, value=cmd.payload,
                       headers=cmd.headers)
        binding = self.app.bindings.get(rec.topic)
        if binding is None:
            self.dead_letter(rec, f"forwarded record of topic {rec.topic!r}, which no handler of this deploy is "
                                  "bound to", "UnboundTopic")
        elif forwarding.owner(rec.key, binding.handler.keyed, self.partition, self.partitions_total) is not None:
            self.dead_letter(rec, f"forwarded to partition {self.partition}, which does not own its key",
                             "WrongPartition")
        else:  # exactly as if it had arrived here (its offset is the source partition's business)
            self.admit(rec, binding)
        return None

    def _cmd_response(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        if cmd.invocation_id is None:
            return "BadCommand", "a response command names no invocation"
        problem = self._complete_pending(cmd.invocation_id, cmd.seq, EntryKind.CALL, cmd.payload, cmd.failure)
        if problem is not None:
            row = self._row(cmd.invocation_id)
            if row is None or row.status.terminal:
                # The caller finished without this answer (a select or with_timeout it lost, a cancel or
                # kill) and its journal is gone: nothing waits for it.
                log.info("response to finished invocation %s #%d dropped: %s", cmd.invocation_id, cmd.seq,
                         problem[1])
                return None
        return problem

    def _cmd_awakeable(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        try:
            inv, seq = routing.parse_awakeable_id(cmd.target_id or "")
        except ValueError as e:
            return "BadAwakeable", str(e)
        if cmd.kind is CommandKind.RESOLVE_AWAKEABLE:
            problem = self._complete_pending(inv, seq, EntryKind.AWAKEABLE, cmd.payload, None)
        else:
            reason = cmd.failure.message if cmd.failure else "rejected"
            problem = self._complete_pending(inv, seq, EntryKind.AWAKEABLE, None,
                                             Failure(type="AwakeableRejected", message=reason))
        row = None if problem is None else self._row(inv)
        if row is not None and row.status.terminal:  # finished (its journal gone): completed, or never to be
            log.info("%s of %s dropped: invocation %s has finished", cmd.kind, cmd.target_id, inv)
            return None
        return problem

    def _complete_pending(self, inv: str, seq: int, kind: EntryKind, value: bytes | None,
                          failure: Failure | None) -> tuple[str, str] | None:
        rt = self.runtimes.get(inv)
        journal = rt.core.journal() if rt is not None else self._journal(inv)
        entry = next((e for e in journal if e.seq == seq), None)
        if entry is None:
            return "UnknownTarget", f"no {kind} #{seq} of invocation {inv} (finished and purged, or never made)"
        if entry.kind != kind and not (kind is EntryKind.CALL and entry.kind is EntryKind.ATTACH):  # both get responses
            return "UnknownTarget", f"#{seq} of invocation {inv} is a {entry.kind}, not a {kind}"
        if not entry.pending:
            return None  # completed already: a duplicate completion is a no-op
        self.complete_entry(inv, replace(entry, pending=False, value=value, failure=failure))
        return None

    def _cmd_cancel(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        inv = self.resolve_alias(cmd.invocation_id or "")
        row = self._row(inv)
        if row is None or row.status.terminal:
            return None
        rt = self.runtimes.get(inv)
        if rt is not None:
            self._update_row(inv, lambda r: replace(r, cancelled=True))
            rt.waits.cancel()
        elif row.status in (Status.SUSPENDED, Status.RUNNING):  # RUNNING: woken, starts after this commit
            self._cancel_waiting(row)
        else:  # queued, backing off or paused: it never awaits again, finish it now
            self._finish_idle(row, Failure(type="Cancelled", message="the invocation was cancelled"))
        return None

    def _cancel_waiting(self, row: InvocationRow) -> None:
        """Cancel an invocation that is not in memory but will run again: fail its pending waits (which
        wakes it), or, with none pending, flag the row so its next runtime delivers the cancellation."""
        from processor._engine.waits import CANCELLED

        pending = [e for e in self._journal(row.id) if e.pending]
        if not pending:
            self._update_row(row.id, lambda r: replace(r, cancelled=True))
        for entry in pending:
            if entry.kind is EntryKind.CALL and entry.value:
                self.cancel_callee(entry.value.decode())
            self.complete_entry(row.id, replace(entry, pending=False, failure=CANCELLED))

    def _finish_idle(self, row: InvocationRow, failure: Failure) -> None:
        """Finish an invocation that has no runtime. One still queued behind another of its key leaves
        the key's in-memory queue too: the queue would otherwise start it (a finished row) later."""
        if row.status is Status.QUEUED and row.key is not None:
            q = self._queues.get((row.service, row.key))
            if q and q[0] != row.id and row.id in q:
                q.remove(row.id)
        self.finish_row(row, None, failure)

    def _cmd_kill(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        inv = self.resolve_alias(cmd.invocation_id or "")
        row = self._row(inv)
        if row is None or row.status.terminal:
            return None
        rt = self.runtimes.pop(inv, None)
        if rt is not None:
            rt.drop()
            row = rt.row
        log.warning("invocation %s (%s) killed", inv, row.target)
        self._finish_idle(row, KILLED)
        return None

    def _cmd_purge(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        """Forget a finished invocation before its retention ends (its purge timer then finds nothing)."""
        inv = self.resolve_alias(cmd.invocation_id or "")
        row = self._row(inv)
        if row is not None and row.status.terminal:
            self._purge(inv)
        return None

    def _cmd_retry(self, msg: InRecord, cmd: InboxCommand) -> tuple[str, str] | None:
        """Run a backing-off invocation now instead of at its retry timer (which is cancelled), or
        replay a paused one (as a new deploy's load does). Anything else: a no-op."""
        from processor._engine.partition import INVOCATION_SEQ

        inv = self.resolve_alias(cmd.invocation_id or "")
        row = self._row(inv)
        if row is None or inv in self.runtimes or row.status not in (Status.BACKING_OFF, Status.PAUSED):
            return None
        if row.status is Status.BACKING_OFF and row.retry_at_ms is not None:
            self.timers.cancel(row.retry_at_ms, inv, INVOCATION_SEQ)
        self.start(row)
        return None

    def cancel_delivered(self, rt: InvocationRuntime) -> None:
        self._update_row(rt.invocation_id, lambda r: replace(r, cancelled=False))

    # -- completions and suspension ---------------------------------------------------------------

    def complete_entry(self, invocation_id: str, entry: Entry) -> None:
        """Journal the completion of a pending wait and wake (or resume) its invocation."""
        if entry.ended_ms is None:  # a fresh completion: when it began is the pending entry's (decode_journal)
            entry.ended_ms = int(self.wall_time() * 1000)
        rt = self.runtimes.get(invocation_id)
        if rt is not None:
            rt.waits.completed(entry)
            return
        self._append_journal(invocation_id, [entry])
        row = self._row(invocation_id)
        if row is not None and row.status is Status.SUSPENDED:
            # Woken in the same commit as the completion: a crash right after it still finds a RUNNING
            # row to resume at load. Replay reads the journal: start only once this is durable.
            self._update_row(invocation_id, lambda r: r.moved(Status.RUNNING))
            self.after_commit(lambda: self._resume_woken(invocation_id))

    def _resume_woken(self, invocation_id: str) -> None:
        row = self._row(invocation_id)
        if row is not None and row.status is Status.RUNNING and invocation_id not in self.runtimes:
            self.start(row)

    def suspend_idle(self, idle_s: float) -> int:
        """Evict invocations that only wait on durable completions; returns how many."""
        evicted = 0
        for inv, rt in list(self.runtimes.items()):
            if rt.waits.suspendable(idle_s):
                rt.drop()
                del self.runtimes[inv]
                self.save(rt, rt.row.moved(Status.SUSPENDED))
                # Out of memory, out of `_durable` too: a hundred thousand sleepers' ids, kept, pin
                # the allocator's arenas (start() and finish_row() ask the store instead).
                self._durable.discard(inv)
                evicted += 1
        return evicted

    # -- workflow promises ------------------------------------------------------------------------

    def _promise_scope(self, rt: InvocationRuntime, name: str) -> tuple[str, str, str]:
        if rt.key is None:
            raise TerminalError("promises belong to workflows")
        return rt.handler.service, rt.key, name

    def promise_state(self, rt: InvocationRuntime, name: str) -> tuple[bytes | None, Failure | None] | None:
        data = self.state.get(keys.promise_key(*self._promise_scope(rt, name)))
        if data is None:
            return None
        r = schemas.decode("InvocationResult", data)
        return r["value"], failure_of(r["failure"])

    def promise_wait(self, rt: InvocationRuntime, name: str, seq: int) -> None:
        self.write(keys.promise_waiter_key(*self._promise_scope(rt, name), rt.invocation_id, seq), b"")

    def promise_complete(self, rt: InvocationRuntime, name: str, value: bytes | None,
                         failure: Failure | None) -> bool:
        scope = self._promise_scope(rt, name)
        if self.state.get(keys.promise_key(*scope)) is not None:
            return False
        self.write(keys.promise_key(*scope), schemas.encode("InvocationResult", {
            "invocation_id": rt.invocation_id, "status": "failed" if failure else "completed",
            "value": value, "failure": failure_dict(failure)}))
        for k, _ in list(self.state.scan(keys.promise_waiter_prefix(*scope))):
            *_, inv, seq = keys.parse_promise_waiter_key(k)
            self.write(k, None)
            self._complete_pending(inv, seq, EntryKind.PROMISE, value, failure)
        return True


def _timer(due_ms: int, owner: tuple[str, int], payload: bytes) -> Any:
    from processor.timers import Timer

    return Timer(due_ms=due_ms, invocation_id=owner[0], seq=owner[1], payload=payload)


_COMMANDS: dict[str, Callable[[Messaging, InRecord, InboxCommand], tuple[str, str] | None]] = {
    CommandKind.INVOKE: Messaging._cmd_invoke,
    CommandKind.FORWARD: Messaging._cmd_forward,
    CommandKind.RESPONSE: Messaging._cmd_response,
    CommandKind.RESOLVE_AWAKEABLE: Messaging._cmd_awakeable,
    CommandKind.REJECT_AWAKEABLE: Messaging._cmd_awakeable,
    CommandKind.ATTACH: Messaging._cmd_attach,
    CommandKind.CANCEL: Messaging._cmd_cancel,
    CommandKind.KILL: Messaging._cmd_kill,
    CommandKind.PURGE: Messaging._cmd_purge,
    CommandKind.RETRY: Messaging._cmd_retry,
}
