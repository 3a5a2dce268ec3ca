"""Invoke commands the engine resolves itself, on one partition worker over the in-memory store: a
Client's own id for a workflow's run becomes an alias of the key's one run (answered under that id,
forgotten with the run), and an invoke that cannot run is failed at once for whoever waits on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import processor as p
from processor import schemas
from processor._engine import routing
from processor._engine.commands import CommandKind, InboxCommand
from processor._engine.core import Failure
from processor._engine.partition import PartitionWorker
from processor._engine.records import InRecord, InvocationRow, Status
from processor.state import keys
from processor.state.memory import MemoryStore

RETENTION = timedelta(seconds=60)


def _app() -> p.App:
    app = p.App("inv", partitions=1, retention=RETENTION)
    wf = app.workflow("wf")

    @wf.run()
    async def run(ctx: p.WorkflowContext, arg: Any) -> Any:
        return {"key": ctx.key, "arg": arg}

    return app


class Worker:
    def __init__(self, app: p.App, pool: ThreadPoolExecutor) -> None:
        self.store = MemoryStore()
        self.w = PartitionWorker(app=app, partition=0, partitions_total=1, store=self.store, step_executor=pool,
                                 on_work=lambda: None)
        self.w.load()
        self.offset = 0
        self.results: list[dict[str, Any]] = []
        self.inbox: list[dict[str, Any]] = []
        self.dlq = 0

    def send(self, kind: str, **fields: Any) -> None:
        self.offset += 1
        self.w.on_inbox(InRecord(topic="inv.inbox", partition=0, offset=self.offset, key=b"k",
                                 value=InboxCommand(kind=kind, **fields).encode()))

    async def commit(self) -> None:
        for _ in range(3):
            for _ in range(30):
                await asyncio.sleep(0)
            s = self.w.seal()
            self.store.apply(s.overlay.items(), self.store.changelog_offset())
            self.w.committed(s)
            for o in s.outputs:
                if o.topic == "inv.results":
                    self.results.append(schemas.decode("InvocationResult", o.value or b""))
                elif o.topic == "inv.inbox":
                    self.inbox.append(schemas.decode("InboxCommand", o.value or b""))
                elif o.topic == "inv.dlq":
                    self.dlq += 1

    def rows(self) -> list[InvocationRow]:
        return [InvocationRow.decode(v) for _, v in self.w.state.scan(keys.INVOCATION)]


def _run(scenario: Callable[[Worker], Any]) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            await scenario(Worker(_app(), pool))
    asyncio.run(main())


RUN_ID = routing.invocation_id(0, "workflow", "wf", "u1")
CLIENT_ID = routing.invocation_id(0, "client", "wf/run", "u1", "seed")


def test_a_client_id_for_a_workflow_run_aliases_the_one_run_is_answered_and_is_purged_with_it() -> None:
    async def scenario(w: Worker) -> None:
        w.send("invoke", invocation_id=CLIENT_ID, service="wf", handler="run", key="u1", payload=b'"a"', notify=True)
        w.send("invoke", invocation_id=CLIENT_ID, service="wf", handler="run", key="u1", payload=b'"a"', notify=True)
        w.send("invoke", invocation_id=RUN_ID, service="wf", handler="run", key="u1", payload=b'"b"', notify=True)
        await w.commit()
        [run] = w.rows()
        assert (run.id, run.status, run.result) == (RUN_ID, Status.COMPLETED, b'{"key":"u1","arg":"a"}')
        assert w.w.resolve_alias(CLIENT_ID) == RUN_ID
        assert {(r["invocation_id"], r["status"]) for r in w.results} == {(CLIENT_ID, "completed"),
                                                                            (RUN_ID, "completed")}

        w.results.clear()
        w.send("attach", invocation_id=CLIENT_ID)  # result(client id) after the run finished
        await w.commit()
        assert [(r["invocation_id"], r["value"]) for r in w.results] == [(CLIENT_ID, run.result)]

        w.w.fire_timers(int(time.time() * 1000) + int(RETENTION.total_seconds() * 1000) + 1000)
        await w.commit()
        assert w.rows() == [] and w.w.state.get(keys.dedup_key(CLIENT_ID)) is None, "both forgotten"
        assert list(w.w.state.scan(keys.SUBSCRIBER)) == []
        w.results.clear()
        w.send("attach", invocation_id=CLIENT_ID)
        await w.commit()
        assert [(r["invocation_id"], r["status"]) for r in w.results] == [(CLIENT_ID, "unknown")]
    _run(scenario)


def test_an_invoke_of_an_unknown_handler_is_dead_lettered_and_failed_for_its_client_and_its_caller() -> None:
    async def scenario(w: Worker) -> None:
        client = routing.invocation_id(0, "client", "nope/h", "", "s")
        callee = routing.invocation_id(0, "call", "caller", "3")
        w.send("invoke", invocation_id=client, service="nope", handler="h", payload=b"{}", notify=True)
        w.send("invoke", invocation_id=callee, service="wf", handler="run", payload=b"{}",
               caller_id="inv-0-caller", caller_seq=3, caller_partition=0)  # keyed, but no key
        await w.commit()
        assert w.dlq == 2
        assert [(r["invocation_id"], r["status"], r["failure"]["type"]) for r in w.results] == [
            (client, "failed", "UnknownHandler")]
        assert [(c["kind"], c["invocation_id"], c["seq"], c["failure"]["type"]) for c in w.inbox] == [
            ("response", "inv-0-caller", 3, "MissingKey")]
        assert sorted((r.id, r.status) for r in w.rows()) == sorted([(client, Status.FAILED),
                                                                     (callee, Status.FAILED)])
    _run(scenario)


def test_inbox_commands_round_trip_and_an_unknown_kind_keeps_its_name() -> None:
    cmd = InboxCommand(kind=CommandKind.REJECT_AWAKEABLE, target_id="awk-inv-0-a-3", notify=True,
                       failure=Failure(type="AwakeableRejected", message="no"), headers=[("h", b"\xff")])
    back = InboxCommand.decode(cmd.encode())
    assert back == cmd and back.kind is CommandKind.REJECT_AWAKEABLE
    newer = InboxCommand.decode(schemas.encode("InboxCommand", {"kind": "from_the_future"}))
    assert newer.kind == "from_the_future" and not isinstance(newer.kind, CommandKind)
