"""Handler-side control: a handler resolves or rejects another invocation's awakeable, cancels another
invocation and attaches to one's outcome, each exactly once across replays (always-replay mode replays
every invocation from its journal after each commit); ``p.gather`` is a durable future that composes
with ``p.select`` and ``with_timeout``. Partitions differ between the actor and its target, so every
action crosses ``<app>.inbox`` as it does in production."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import processor as p
from processor._engine import routing
from processor._engine.commands import CommandKind, InboxCommand
from processor.testing import NotFinished, TestRuntime, replay

PARTITIONS = 4
EFFECTS: list[str] = []
HOUR = timedelta(hours=1)


def _app() -> p.App:
    app = p.App("ctl", partitions=PARTITIONS)
    svc = app.service("svc")

    @svc.handler()
    async def hold(ctx: p.Context, tag: str) -> Any:
        awk, decision = ctx.awakeable()
        ctx.emit("awakeables", {"tag": tag, "awk": awk, "inv": ctx.invocation_id})
        try:
            return await decision
        except p.InvocationCancelled:
            await ctx.run("compensate", EFFECTS.append, f"compensate:{tag}")
            raise

    @svc.handler()
    async def resolver(ctx: p.Context, ev: dict[str, Any]) -> str:
        if "reason" in ev:
            ctx.reject_awakeable(ev["awk"], ev["reason"])
        else:
            ctx.resolve_awakeable(ev["awk"], ev["value"])
        await ctx.sleep(HOUR)  # committed with the resolve, then replayed from the journal
        return "sent"

    @svc.handler()
    async def canceller(ctx: p.Context, target: str) -> str:
        ctx.cancel(target)
        await ctx.sleep(HOUR)
        return "cancelled"

    @svc.handler()
    async def attacher(ctx: p.Context, target: str) -> Any:
        try:
            return {"value": await ctx.attach(target)}
        except p.TerminalError as e:
            return {"error": e.error_type, "class": type(e).__name__, "message": e.message}

    @svc.handler()
    async def attach_or_give_up(ctx: p.Context, target: str) -> Any:
        try:
            return await ctx.attach(target).with_timeout(timedelta(minutes=1))
        except TimeoutError:
            return "gave up"

    @svc.handler()
    async def send_and_attach(ctx: p.Context, tag: str) -> dict[str, Any]:
        callee = ctx.send(hold, tag)
        return {"callee": callee, "result": await ctx.attach(callee)}

    @svc.handler()
    async def both_or_timer(ctx: p.Context, targets: list[str]) -> list[Any]:
        both = p.gather(*(ctx.attach(t) for t in targets))
        assert isinstance(both, p.DurableFuture)
        winner, value = await p.select(all=both, timer=ctx.sleep(HOUR))
        return [winner, value]

    @svc.handler()
    async def both_within(ctx: p.Context, targets: list[str]) -> Any:
        try:
            return await p.gather(*(ctx.attach(t) for t in targets)).with_timeout(HOUR)
        except TimeoutError:
            return "timed out"
        except p.TerminalError as e:
            return f"failed: {e.message}"

    @svc.handler()
    async def nothing_to_gather(ctx: p.Context, _: Any) -> Any:
        return [await p.gather(), await p.gather().with_timeout(HOUR)]

    jobs = app.service("jobs")  # the README's example

    @jobs.handler()
    async def process(ctx: p.Context, item: dict[str, Any]) -> Any:
        if item.get("slow"):
            return await hold(ctx, item["tag"])
        return item["tag"].upper()

    @jobs.handler()
    async def fan_out(ctx: p.Context, batch: list[dict[str, Any]]) -> list[Any]:
        ids = [ctx.send(process, item) for item in batch]
        try:
            return await p.gather(*(ctx.attach(i) for i in ids)).with_timeout(HOUR)
        except TimeoutError:
            for i in ids:
                ctx.cancel(i)
            raise p.TerminalError("batch took longer than an hour") from None

    signup = app.workflow("signup")

    @signup.run()
    async def run(ctx: p.WorkflowContext, user: str) -> str:
        return f"{user}:{await ctx.promise('confirmed')}"

    @signup.handler()
    async def confirm(ctx: p.WorkflowSharedContext, code: str) -> None:
        ctx.promise("confirmed").resolve(code)

    records = app.service("records")

    @records.handler()
    async def hold_record(ctx: p.Context, tag: str) -> Any:
        return await hold(ctx, tag)

    app.subscribe("tags", hold_record)
    return app


@pytest.fixture
def rt() -> Iterator[TestRuntime]:
    EFFECTS.clear()
    with TestRuntime(_app(), always_replay=True) as runtime:
        yield runtime


KEYS = itertools.count()


def _key_on(partition: int, target: str) -> str:
    """A fresh idempotency key whose invocation of `target` lives on `partition`."""
    for i in KEYS:
        key = f"k{i}"
        if routing.target_partition(None, f"client\0{target}\0{key}", PARTITIONS) == partition:
            return key
    raise AssertionError("unreachable")


def _start(rt: TestRuntime, target: str, arg: Any, partition: int) -> str:
    inv = rt.submit(target, arg, idempotency_key=_key_on(partition, target))
    assert routing.partition_of(inv) == partition
    return inv


def _holding(rt: TestRuntime, tag: str, partition: int = 0) -> tuple[str, str]:
    """Start svc/hold on `partition`: (its invocation id, its awakeable id)."""
    inv = _start(rt, "svc/hold", tag, partition)
    [awk] = [e["awk"] for e in rt.emitted("awakeables") if e["tag"] == tag]
    return inv, awk


def _commands(rt: TestRuntime, kind: CommandKind) -> list[InboxCommand]:
    """The committed inbox commands of `kind` (what a read_committed consumer sees)."""
    cmds = [InboxCommand.decode(r.value or b"") for r in rt.log.read_committed(rt.app.inbox_topic)]
    return [c for c in cmds if c.kind == kind]


# -- awakeables -------------------------------------------------------------------------------------


def test_a_handler_resolves_an_awakeable_of_another_partition_once_however_often_it_replays(
        rt: TestRuntime) -> None:
    holder, awk = _holding(rt, "a", partition=0)
    resolver = _start(rt, "svc/resolver", {"awk": awk, "value": {"by": "alice"}}, partition=2)
    assert rt.result(holder) == {"by": "alice"}
    rt.advance(HOUR)
    assert rt.result(resolver) == "sent"
    sent = _commands(rt, CommandKind.RESOLVE_AWAKEABLE)
    assert [(c.target_id, c.payload) for c in sent] == [(awk, b'{"by":"alice"}')], \
        "replayed after the resolve was committed: the journal keeps it from being sent again"
    assert [(e.kind, e.name, e.state) for e in rt.journal(resolver)] == [
        ("resolve_awakeable", awk, "done"), ("sleep", "sleep", "done")]
    assert rt.dead_letters() == []


def test_a_handler_rejects_an_awakeable_and_its_awaiter_gets_the_reason(rt: TestRuntime) -> None:
    holder, awk = _holding(rt, "r", partition=1)
    _start(rt, "svc/resolver", {"awk": awk, "reason": "over budget"}, partition=3)
    with pytest.raises(p.TerminalError, match="over budget") as rejected:
        rt.result(holder)
    assert rejected.value.error_type == "AwakeableRejected"
    assert len(_commands(rt, CommandKind.REJECT_AWAKEABLE)) == 1


def test_resolving_an_awakeable_twice_from_handlers_keeps_the_first_value(rt: TestRuntime) -> None:
    holder, awk = _holding(rt, "t", partition=0)
    _start(rt, "svc/resolver", {"awk": awk, "value": "first"}, partition=1)
    _start(rt, "svc/resolver", {"awk": awk, "value": "second"}, partition=2)
    assert rt.result(holder) == "first"
    assert rt.dead_letters() == [], "a second completion of a completed awakeable is a no-op"


def test_a_malformed_awakeable_id_fails_the_handler_with_bad_awakeable_and_sends_nothing(
        rt: TestRuntime) -> None:
    for bad in ("nope", "awk-inv-99-abc-0"):  # not an id; a partition the app does not have
        inv = _start(rt, "svc/resolver", {"awk": bad, "value": 1}, partition=0)
        with pytest.raises(p.TerminalError) as refused:
            rt.result(inv)
        assert refused.value.error_type == "BadAwakeable"
    assert _commands(rt, CommandKind.RESOLVE_AWAKEABLE) == []


def test_an_awakeable_id_naming_no_awakeable_is_dead_lettered_by_its_owner(rt: TestRuntime) -> None:
    _start(rt, "svc/resolver", {"awk": "awk-inv-1-ffff-0", "value": 1}, partition=0)
    [dead] = rt.dead_letters()
    assert dead.headers["processor.error.class"] == b"UnknownTarget"


# -- cancel -----------------------------------------------------------------------------------------


def test_a_handler_cancels_an_invocation_of_another_partition_once_and_it_compensates(rt: TestRuntime) -> None:
    holder, _ = _holding(rt, "c", partition=3)
    canceller = _start(rt, "svc/canceller", holder, partition=0)
    with pytest.raises(p.InvocationCancelled):
        rt.result(holder)
    assert EFFECTS == ["compensate:c"]
    rt.advance(HOUR)
    assert rt.result(canceller) == "cancelled"
    assert [c.invocation_id for c in _commands(rt, CommandKind.CANCEL)] == [holder], \
        "the cancel is sent once: the canceller's replays find it journaled"


def test_cancelling_a_finished_or_unknown_invocation_does_nothing(rt: TestRuntime) -> None:
    holder, awk = _holding(rt, "f", partition=1)
    rt.resolve_awakeable(awk, "done")
    _start(rt, "svc/canceller", holder, partition=2)
    _start(rt, "svc/canceller", "inv-2-0123456789abcdef01234567", partition=0)
    assert rt.result(holder) == "done"
    assert rt.dead_letters() == []


def test_cancel_with_an_id_that_is_no_invocation_id_fails_with_bad_invocation_id(rt: TestRuntime) -> None:
    inv = _start(rt, "svc/canceller", "order-17", partition=0)
    with pytest.raises(p.TerminalError) as refused:
        rt.result(inv)
    assert refused.value.error_type == "BadInvocationId"
    assert _commands(rt, CommandKind.CANCEL) == []


# -- attach -----------------------------------------------------------------------------------------


def test_attach_waits_for_an_invocation_of_another_partition_and_returns_its_result(rt: TestRuntime) -> None:
    holder, awk = _holding(rt, "w", partition=0)
    attacher = _start(rt, "svc/attacher", holder, partition=1)
    with pytest.raises(NotFinished):
        rt.result(attacher)
    rt.advance(timedelta(minutes=5))  # idle past suspend_after: the attacher leaves memory, still subscribed
    assert rt.status(attacher) == "suspended"
    rt.resolve_awakeable(awk, [1, 2])
    assert rt.result(attacher) == {"value": [1, 2]}
    assert [(c.invocation_id, c.caller_id) for c in _commands(rt, CommandKind.ATTACH)] == [(holder, attacher)]
    assert [c.invocation_id for c in _commands(rt, CommandKind.RESPONSE)] == [attacher]
    assert rt.status(holder) == "completed", "attaching does not change the target"


def test_exported_journals_with_the_new_actions_replay_against_the_same_code(rt: TestRuntime,
                                                                             tmp_path: Path) -> None:
    holder, _ = _holding(rt, "e", partition=0)
    attacher = _start(rt, "svc/attacher", holder, partition=1)
    resolver = _start(rt, "svc/resolver", {"awk": "awk-inv-3-ffff-0", "value": 1}, partition=2)
    canceller = _start(rt, "svc/canceller", "inv-3-0123456789abcdef01234567", partition=3)
    path = tmp_path / "inflight.jsonl"
    assert rt.export_journals(path) == 4  # the holder (awakeable), the attacher, resolver and canceller (sleeps)
    report = replay(_app(), path)
    assert report.replayed == 4 and report.divergences == ()
    assert {e.kind for i in (attacher, resolver, canceller) for e in rt.journal(i)} >= {
        "attach", "resolve_awakeable", "cancel"}


def test_attach_to_a_finished_invocation_answers_at_once(rt: TestRuntime) -> None:
    holder, awk = _holding(rt, "d", partition=2)
    rt.resolve_awakeable(awk, "early")
    assert rt.invoke("svc/attacher", holder) == {"value": "early"}


def test_attach_raises_the_targets_failure_cancellation_included(rt: TestRuntime) -> None:
    rejected, awk = _holding(rt, "x", partition=0)
    rt.reject_awakeable(awk, "no")
    assert rt.invoke("svc/attacher", rejected) == {"error": "AwakeableRejected", "class": "TerminalError",
                                                   "message": "no"}
    cancelled, _ = _holding(rt, "y", partition=1)
    waiting = _start(rt, "svc/attacher", cancelled, partition=3)
    rt.cancel(cancelled)
    assert rt.result(waiting)["class"] == "InvocationCancelled"


def test_attach_to_an_unknown_or_malformed_id_raises_with_the_reason(rt: TestRuntime) -> None:
    unknown = rt.invoke("svc/attacher", "inv-3-0123456789abcdef01234567")
    assert unknown["error"] == "InvocationNotFound"
    for bad in ("order-17", "inv-7-abc"):
        assert rt.invoke("svc/attacher", bad)["error"] == "BadInvocationId"


def test_an_invocation_cannot_attach_to_itself() -> None:
    app = p.App("selfish", partitions=1)
    svc = app.service("svc")

    @svc.handler()
    async def me(ctx: p.Context, _: Any) -> Any:
        return await ctx.attach(ctx.invocation_id)

    with TestRuntime(app, always_replay=True) as rt, pytest.raises(p.TerminalError, match="itself"):
        rt.invoke("svc/me", None)


def test_attach_to_the_invocation_ctx_send_started(rt: TestRuntime) -> None:
    inv = rt.submit("svc/send_and_attach", "s")
    [awk] = [e["awk"] for e in rt.emitted("awakeables") if e["tag"] == "s"]
    rt.resolve_awakeable(awk, "sent and seen")
    out = rt.result(inv)
    assert out["result"] == "sent and seen"
    assert rt.status(out["callee"]) == "completed"


def test_attach_to_a_topic_records_invocation_answers_when_it_finishes(rt: TestRuntime) -> None:
    rt.send("tags", "from-a-record", key="r1")
    [ev] = [e for e in rt.emitted("awakeables") if e["tag"] == "from-a-record"]
    attacher = rt.submit("svc/attacher", ev["inv"])
    rt.resolve_awakeable(ev["awk"], "recorded")
    assert rt.result(attacher) == {"value": "recorded"}


def test_attach_by_a_clients_id_of_a_workflow_run_waits_for_the_one_run(rt: TestRuntime) -> None:
    alias = rt.submit("signup/run", "ada", key="u1")  # a Client's own id for the key's run
    attacher = rt.submit("svc/attacher", alias)
    rt.submit("signup/confirm", "c0de", key="u1")
    assert rt.result(attacher) == {"value": "ada:c0de"}


def test_an_attach_that_lost_to_its_timeout_leaves_no_dead_letter_when_the_answer_comes(rt: TestRuntime) -> None:
    holder, awk = _holding(rt, "late", partition=0)
    gave_up = _start(rt, "svc/attach_or_give_up", holder, partition=1)
    rt.advance(timedelta(minutes=1))
    assert rt.result(gave_up) == "gave up"
    rt.resolve_awakeable(awk, "too late")
    assert rt.result(holder) == "too late"
    assert rt.dead_letters() == [], "the response to the finished attacher is dropped, not dead-lettered"


# -- gather composes --------------------------------------------------------------------------------


def test_gather_inside_select_wins_when_every_future_completes_before_the_timer(rt: TestRuntime) -> None:
    a, awk_a = _holding(rt, "ga", partition=0)
    b, awk_b = _holding(rt, "gb", partition=1)
    inv = _start(rt, "svc/both_or_timer", [a, b], partition=2)
    rt.resolve_awakeable(awk_b, "B")
    with pytest.raises(NotFinished):
        rt.result(inv)
    rt.resolve_awakeable(awk_a, "A")
    assert rt.result(inv) == ["all", ["A", "B"]], "results in argument order, not completion order"
    assert [(e.name, e.value) for e in rt.journal(inv) if e.kind == "select"] == [("all,timer", "all")], \
        "the winner is journaled: a replay takes the same branch"


def test_the_timer_wins_a_select_against_a_gather_that_waits_on_one_future(rt: TestRuntime) -> None:
    a, awk_a = _holding(rt, "ta", partition=0)
    b, _ = _holding(rt, "tb", partition=1)
    inv = _start(rt, "svc/both_or_timer", [a, b], partition=3)
    rt.resolve_awakeable(awk_a, "A")
    rt.advance(HOUR)
    assert rt.result(inv) == ["timer", None]


def test_gather_with_timeout_returns_the_results_or_raises_timeout_error(rt: TestRuntime) -> None:
    a, awk_a = _holding(rt, "wa", partition=0)
    b, awk_b = _holding(rt, "wb", partition=1)
    in_time = _start(rt, "svc/both_within", [a, b], partition=2)
    late = _start(rt, "svc/both_within", [a, b], partition=3)
    assert in_time != late
    rt.resolve_awakeable(awk_a, 1)
    rt.resolve_awakeable(awk_b, 2)
    assert rt.result(in_time) == [1, 2]
    assert rt.result(late) == [1, 2]
    c, _ = _holding(rt, "wc", partition=0)
    timed_out = rt.submit("svc/both_within", [a, c])
    rt.advance(HOUR)
    assert rt.result(timed_out) == "timed out"


def test_gather_with_timeout_raises_the_first_failure_in_argument_order(rt: TestRuntime) -> None:
    a, awk_a = _holding(rt, "fa", partition=0)
    b, awk_b = _holding(rt, "fb", partition=1)
    inv = _start(rt, "svc/both_within", [a, b], partition=2)
    rt.reject_awakeable(awk_b, "b failed first")
    rt.reject_awakeable(awk_a, "a failed last")
    assert rt.result(inv) == "failed: a failed last"


def test_an_empty_gather_is_done_at_once_and_cannot_time_out(rt: TestRuntime) -> None:
    assert rt.invoke("svc/nothing_to_gather", None) == [[], []]


def test_gather_refuses_what_is_not_a_durable_future() -> None:
    async def coro() -> None:
        return None

    c = coro()
    with pytest.raises(TypeError, match="durable futures"):
        p.gather(c)  # type: ignore[arg-type]
    c.close()


def test_a_fan_out_of_sends_gathered_with_a_deadline_returns_every_result_or_cancels_the_stragglers(
        rt: TestRuntime) -> None:
    assert rt.invoke("jobs/fan_out", [{"tag": "a"}, {"tag": "b"}]) == ["A", "B"]
    late = rt.submit("jobs/fan_out", [{"tag": "c"}, {"tag": "slow-1", "slow": True}])
    rt.advance(HOUR)
    with pytest.raises(p.TerminalError, match="longer than an hour"):
        rt.result(late)
    assert EFFECTS == ["compensate:slow-1"], "the straggler was cancelled and compensated; the finished one not"
    cancelled = {c.invocation_id for c in _commands(rt, CommandKind.CANCEL)}
    assert len(cancelled) == 2 and len(_commands(rt, CommandKind.CANCEL)) == 2, "one cancel per id, once"
