"""A handler acts on invocations of other partitions — resolves an awakeable, cancels, attaches to a
sent invocation's outcome — exactly once, on a real broker, across a SIGKILL of the instance between
the action and the commit of its cycle (the fault point ``before_work_commit``: the transaction
holding the action's command is aborted, the action runs again and is committed once) and across a
SIGKILL after it (the replay finds it journaled and does not send it again). What counts is what a
read_committed reader of ``<app>.inbox`` sees."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor._engine import routing
from processor._engine.commands import CommandKind, InboxCommand
from processor._engine.records import InvocationRow, Status
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import PARTITIONS, Durable, run
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

KILL_BEFORE_COMMIT = {"PROCESSOR_TEST_FAULTS": "before_work_commit=1"}  # the first cycle with work dies
KEYS = itertools.count()


def _client_id(target: str, key: str) -> str:
    """The id ``Client.invoke(target, ..., idempotency_key=key)`` gives a service invocation."""
    p = routing.target_partition(None, f"client\0{target}\0{key}", PARTITIONS)
    return routing.invocation_id(p, "client", target, "", key)


def _key_where(target: str, ok: Callable[[str], bool]) -> str:
    """A fresh idempotency key whose invocation id of `target` satisfies `ok`."""
    return next(k for i in KEYS if ok(_client_id(target, k := f"k{i}")))


def _holding(kafka: Kafka, spawn: Spawner, tmp_path: Path, target: str, ev_id: str,
             partition: int) -> tuple[Durable, str, str]:
    """A running app (invocations suspend after 0.5 s) in which `target`, invoked on `partition` for
    `ev_id`, holds (its call chain awaits an awakeable): (app, its id, the awakeable's id)."""
    d = Durable(kafka, spawn, tmp_path, suspend_s=0.5)
    d.proc.start().wait_ready()
    inv = _invoke_on(d, target, {"id": ev_id}, partition)
    return d, inv, d.wait_output(ev_id, "holding")["holding"]


def _invoke_on(d: Durable, target: str, arg: Any, partition: int) -> str:
    return _invoke(d, target, arg, _key_where(target, lambda i: routing.partition_of(i) == partition))


def _invoke(d: Durable, target: str, arg: Any, key: str) -> str:
    async def go() -> str:
        async with d.client() as client:
            return await client.invoke(target, arg, idempotency_key=key)
    inv = run(go())
    assert inv == _client_id(target, key)
    return inv


def _inbox(d: Durable, kind: CommandKind, *, isolation: str = "read_committed") -> list[InboxCommand]:
    cmds = [InboxCommand.decode(r.value or b"") for r in d.kafka.drain(f"{d.name}.inbox", isolation=isolation)]
    return [c for c in cmds if c.kind == kind]


def _row_when(d: Durable, inv: str, ok: Callable[[InvocationRow], bool], what: str) -> InvocationRow:
    got: list[InvocationRow] = []

    def seen() -> bool:
        row = d.row(inv)
        got[:] = [row] if row is not None and ok(row) else []
        return bool(got)
    wait_until(seen, 60, f"{inv} {what}", interval=0.2)
    return got[0]


def _finished(d: Durable, inv: str) -> InvocationRow:
    return _row_when(d, inv, lambda r: r.status.terminal, "to finish")


def _suspended(d: Durable, inv: str) -> None:
    _row_when(d, inv, lambda r: r.status is Status.SUSPENDED, "to be suspended")


def _killed_at_its_first_commit(d: Durable) -> None:
    assert d.proc.wait_exit() == -signal.SIGKILL, d.proc.log()[-3000:]


def test_a_handler_resolves_an_awakeable_of_another_partition_once_across_a_sigkill_before_its_commit(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d, holder, awk = _holding(kafka, spawn, tmp_path, "holder/hold_until_decided", "h1", partition=0)
    _suspended(d, holder)  # out of memory: the next life has no work until the resolver's
    assert d.proc.stop() == 0

    d.proc.start(KILL_BEFORE_COMMIT).wait_ready()
    resolver = _invoke_on(d, "control/resolve_other", {"id": "r1", "awakeable": awk, "value": {"by": "bob"}}, 2)
    _killed_at_its_first_commit(d)
    assert [c.target_id for c in _inbox(d, CommandKind.RESOLVE_AWAKEABLE, isolation="read_uncommitted")] == [awk], \
        "the killed cycle had produced the resolve"
    assert _inbox(d, CommandKind.RESOLVE_AWAKEABLE) == [], "... and its transaction never committed"

    d.proc.start().wait_ready()
    h, r = _finished(d, holder), _finished(d, resolver)
    assert d.proc.stop() == 0
    assert (h.status, r.status) == (Status.COMPLETED, Status.COMPLETED)
    assert orjson.loads(h.result or b"") == {"by": "bob"}
    assert [(c.target_id, orjson.loads(c.payload or b"")) for c in _inbox(d, CommandKind.RESOLVE_AWAKEABLE)] == [
        (awk, {"by": "bob"})], "resolved exactly once"
    assert [(e.kind, e.name) for e in d.journal(resolver)] == [("resolve_awakeable", awk), ("run", "resolved")]


def test_a_handler_cancels_an_invocation_of_another_partition_once_across_a_sigkill_before_its_commit(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d, book, _ = _holding(kafka, spawn, tmp_path, "booking/book", "b1", partition=1)
    wait_until(lambda: [r for r in d.rows_of("holder/hold_until_decided") if r.caller_id == book], 60,
               "the callee's row")
    [callee] = [r.id for r in d.rows_of("holder/hold_until_decided") if r.caller_id == book]
    _suspended(d, book)
    _suspended(d, callee)
    assert d.proc.stop() == 0

    d.proc.start(KILL_BEFORE_COMMIT).wait_ready()
    canceller = _invoke_on(d, "control/cancel_other", {"id": "x1", "target": book}, 3)
    _killed_at_its_first_commit(d)
    assert [c.invocation_id for c in _inbox(d, CommandKind.CANCEL, isolation="read_uncommitted")] == [book]
    assert _inbox(d, CommandKind.CANCEL) == []

    d.proc.start().wait_ready()
    b, c, x = _finished(d, book), _finished(d, callee), _finished(d, canceller)
    assert d.proc.stop() == 0
    assert x.status is Status.COMPLETED
    assert [(r.status, r.failure and r.failure.type) for r in (b, c)] == [(Status.FAILED, "Cancelled")] * 2
    assert d.effects()["compensate:b1"] == 1, "the cancelled invocation compensated once"
    cancels = [c.invocation_id for c in _inbox(d, CommandKind.CANCEL)]
    assert cancels.count(book) == 1, f"the handler's cancel was committed once: {cancels}"
    assert cancels.count(callee) == 1, "and the cancelled invocation cancelled its own callee"


def test_attach_to_a_sent_invocation_of_another_partition_survives_sigkills_before_and_after_its_commit(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    target = "control/send_then_attach"

    def callee_of(inv: str) -> str:  # ctx.send's callee id: from (caller id, its position 0)
        seed = ("send", inv, "0")
        return routing.invocation_id(routing.target_partition(None, "\0".join(seed), PARTITIONS), *seed)

    key = _key_where(target, lambda i: routing.partition_of(callee_of(i)) != routing.partition_of(i))
    attacher = _client_id(target, key)
    callee = callee_of(attacher)
    d = Durable(kafka, spawn, tmp_path)

    d.proc.start(KILL_BEFORE_COMMIT).wait_ready()  # a new app: the attacher's is the first cycle with work
    _invoke(d, target, {"id": "a1"}, key)
    _killed_at_its_first_commit(d)
    assert [c.caller_id for c in _inbox(d, CommandKind.ATTACH, isolation="read_uncommitted")] == [attacher]
    assert _inbox(d, CommandKind.ATTACH) == []

    d.proc.start().wait_ready()
    awk = d.wait_output("a1", "holding")["holding"]
    d.wait_journal(attacher, lambda es: [(e.kind, e.pending) for e in es][-1:] == [("attach", True)],
                   "the attach committed, pending")
    d.proc.kill()  # the attacher and its target are in flight: both replay their journals next time

    async def resolve() -> None:
        async with d.client() as client:
            await client.resolve_awakeable(awk, "granted")
    run(resolve())
    d.proc.start().wait_ready()
    assert d.wait_output("a1", "attached") == {"id": "a1", "attached": "granted"}
    a = _finished(d, attacher)
    assert d.proc.stop() == 0
    assert a.status is Status.COMPLETED and orjson.loads(a.result or b"") == "granted"
    assert [o for o in d.outputs_of("a1") if "sent" in o] == [{"id": "a1", "sent": callee}]
    assert [c.invocation_id for c in _inbox(d, CommandKind.INVOKE) if c.invocation_id == callee] == [callee], \
        "sent once"
    assert [(c.invocation_id, c.caller_seq) for c in _inbox(d, CommandKind.ATTACH)] == [(callee, 2)], \
        "attached once, from the attacher's position 2 (send, emit, attach)"
    assert [c.invocation_id for c in _inbox(d, CommandKind.RESPONSE)] == [attacher], "answered once"
    assert d.row(callee) is not None and routing.partition_of(callee) != routing.partition_of(attacher)
