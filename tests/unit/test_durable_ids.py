"""Where invocations live: ids that carry their partition, agreed on by the engine and the Client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import processor as p
from processor._app import HandlerKind
from processor._engine import routing
from processor._engine.core import invocation_id_for_record
from processor._engine.messaging import Messaging

P = 8


class _Partitions:
    partitions_total = P


def _handlers() -> tuple[p.App, dict[str, Any]]:
    app = p.App("ids")
    wf, svc = app.workflow("signup"), app.service("greeter")

    @wf.run()
    async def run(ctx: p.WorkflowContext, arg: Any) -> None: ...

    @svc.handler()
    async def greet(ctx: p.Context, arg: Any) -> None: ...

    return app, {"run": app.handler_for(run), "greet": app.handler_for(greet)}


def test_a_keyed_invocation_lives_on_its_keys_partition_and_a_service_call_on_its_seeds() -> None:
    assert routing.target_partition("user-1", "ignored", P) == routing.partition_for_key(b"user-1", P)
    assert routing.target_partition(None, "call\0inv-1-ab\x003", P) == routing.partition_for_key(
        b"call\0inv-1-ab\x003", P)


def test_record_invocation_ids_are_deterministic_per_record_and_carry_its_partition() -> None:
    a = invocation_id_for_record("orders", 5, 42)
    assert a == invocation_id_for_record("orders", 5, 42)
    assert a not in {invocation_id_for_record("orders", 5, 43), invocation_id_for_record("other", 5, 42)}
    assert routing.partition_of(a) == 5
    assert a == "inv-5-orders@5:42", "readable: where the record was"
    assert invocation_id_for_record("orders", 5, 42, owner=2) == "inv-2-orders@5:42"


def test_a_call_from_the_same_caller_position_names_the_same_callee_on_every_replay() -> None:
    _app, h = _handlers()
    seed = ("call", routing.invocation_id(2, "x"), "3")
    first = Messaging.callee_id(_Partitions(), h["greet"], None, seed)  # type: ignore[arg-type]
    assert first == Messaging.callee_id(_Partitions(), h["greet"], None, seed)  # type: ignore[arg-type]
    assert routing.partition_of(first[0]) == first[1]
    other = Messaging.callee_id(_Partitions(), h["greet"], None, (*seed[:2], "4"))  # type: ignore[arg-type]
    assert other[0] != first[0]


def test_a_workflow_run_has_one_id_per_key_whoever_starts_it() -> None:
    _app, h = _handlers()
    assert h["run"].kind is HandlerKind.WORKFLOW_RUN
    by_call = Messaging.callee_id(_Partitions(), h["run"], "u1", ("call", "inv-0-a", "1"))  # type: ignore[arg-type]
    by_record = Messaging.callee_id(_Partitions(), h["run"], "u1", ())  # type: ignore[arg-type]
    assert by_call == by_record
    assert by_call[1] == routing.partition_for_key(b"u1", P)


def test_the_client_addresses_the_ids_the_engine_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    _app, h = _handlers()
    client = p.Client("127.0.0.1:1", "ids")
    sent: list[tuple[int, str, dict[str, Any]]] = []

    async def count(self: p.Client) -> int:
        return P

    async def send(self: p.Client, partition: int, record_key: str, kind: str, **fields: Any) -> None:
        sent.append((partition, kind, fields))
    monkeypatch.setattr(p.Client, "_partition_count", count)
    monkeypatch.setattr(p.Client, "_send", send)

    async def scenario() -> tuple[str, str, str]:
        wf = await client.submit_workflow("signup", "u1", {})
        once = await client.invoke("greeter/greet", "a", idempotency_key="k")
        again = await client.invoke("greeter/greet", "b", idempotency_key="k")
        assert once == again, "one idempotency key, one invocation"
        await client.cancel(once)
        return wf, once, await client.invoke("greeter/greet", "c")
    wf, once, fresh = asyncio.run(scenario())

    assert wf == Messaging.callee_id(_Partitions(), h["run"], "u1", ())[0]  # type: ignore[arg-type]
    assert fresh != once
    for partition, kind, fields in sent:
        assert partition == routing.partition_of(fields["invocation_id"]), kind
    assert [k for _, k, _ in sent] == ["invoke", "invoke", "invoke", "cancel", "invoke"]


def test_awakeable_ids_name_their_invocation_and_journal_position() -> None:
    inv = routing.invocation_id(3, "record", "t", "9")
    awk = routing.awakeable_id(inv, 41)
    assert routing.parse_awakeable_id(awk) == (inv, 41)
    assert routing.partition_of(routing.parse_awakeable_id(awk)[0]) == 3
    for bad in ("", "awk-", "awk-inv-x-1", "inv-3-abc", "awk-inv-3-abc-notanumber"):
        with pytest.raises(ValueError):
            routing.parse_awakeable_id(bad)
