"""Safe deploys with ``ctx.patched``: a deploy that adds a step before the point invocations in flight
have reached resumes them on their old path, runs new ones on the new path, and without the guard
the divergence is caught — by the replayer, by always-replay mode, and in production by a pause that
``retry`` (after a fixed deploy) or ``kill`` ends (decision 012)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import processor as p
from processor.testing import ReplayDivergence, TestRuntime, replay


def _app(version: str) -> p.App:
    """v1: step "charge", then wait for an approval, then step "ship". v2 adds an "audit" step after
    the charge, guarded by ctx.patched; v2-unguarded adds it without the guard."""
    app = p.App("deploys", partitions=2)
    svc = app.service("svc")

    @svc.handler()
    async def order(ctx: p.Context, n: int) -> dict[str, Any]:
        done = [await ctx.run("charge", lambda: f"charged {n}")]
        if version == "v2-unguarded" or (version == "v2" and ctx.patched("audit")):
            done.append(await ctx.run("audit", lambda: f"audited {n}"))
        awakeable_id, approval = ctx.awakeable()
        ctx.emit("approvals", awakeable_id, key=ctx.invocation_id)
        done.append(f"approved by {await approval}")
        if version == "v2":
            assert ctx.patched("audit") == (len(done) == 3), "a second call answers as the first did"
        done.append(await ctx.run("ship", lambda: f"shipped {n}"))
        return {"steps": done}
    return app


def _approval(rt: TestRuntime, inv: str) -> str:
    return next(r.value for r in rt.emitted_records("approvals") if r.key == inv)


def test_a_deploy_that_adds_a_guarded_step_resumes_old_invocations_on_the_old_path() -> None:
    with TestRuntime(_app("v1")) as rt:
        old = rt.submit("svc/order", 1)
        assert rt.status(old) in ("running", "suspended")
        rt.deploy(_app("v2"))  # rebuilt from the stores under v2: `old` replays its v1 journal
        assert rt.status(old) == "running", "replayed without a divergence"
        new = rt.submit("svc/order", 2)
        rt.resolve_awakeable(_approval(rt, old), "ada")
        rt.resolve_awakeable(_approval(rt, new), "bob")
        assert rt.result(old) == {"steps": ["charged 1", "approved by ada", "shipped 1"]}
        assert rt.result(new) == {"steps": ["charged 2", "audited 2", "approved by bob", "shipped 2"]}
        assert [(e.kind, e.name) for e in rt.journal(new)][:3] == [("run", "charge"), ("patch", "audit"),
                                                                   ("run", "audit")]
        assert "patch" not in [e.kind for e in rt.journal(old)]


def test_an_invocation_suspended_out_of_memory_under_the_old_code_resumes_on_the_old_path() -> None:
    with TestRuntime(_app("v1")) as rt:
        old = rt.submit("svc/order", 1)
        rt.advance(timedelta(hours=1))  # idle past suspend_after: evicted, only its row and journal remain
        assert rt.status(old) == "suspended"
        rt.deploy(_app("v2"))
        assert rt.status(old) == "suspended"
        rt.resolve_awakeable(_approval(rt, old), "eve")  # wakes it: replayed from the store under v2
        assert rt.result(old) == {"steps": ["charged 1", "approved by eve", "shipped 1"]}


def test_always_replay_accepts_the_patch_marker_on_new_invocations() -> None:
    with TestRuntime(_app("v2"), always_replay=True) as rt:
        inv = rt.submit("svc/order", 3)
        rt.resolve_awakeable(_approval(rt, inv), "cy")
        assert rt.result(inv)["steps"][1] == "audited 3"


def test_without_the_guard_the_old_invocation_pauses_and_a_fixed_deploy_and_retry_resumes_it() -> None:
    with TestRuntime(_app("v1")) as rt:
        inv = rt.submit("svc/order", 1)
        rt.deploy(_app("v2-unguarded"))
        assert rt.status(inv) == "paused"
        reason = rt.paused_reason(inv) or ""
        assert "journaled: #1 awakeable" in reason and "replayed:  #1 run('audit')" in reason
        rt.deploy(_app("v2"))  # the fix: the guard; a paused invocation replays again on the next start
        rt.retry(inv)  # (or `processor retry ID`, which sends the same command)
        assert rt.status(inv) == "running"
        rt.resolve_awakeable(_approval(rt, inv), "dee")
        assert rt.result(inv)["steps"] == ["charged 1", "approved by dee", "shipped 1"]


def test_a_paused_invocation_can_be_killed() -> None:
    with TestRuntime(_app("v1")) as rt:
        inv = rt.submit("svc/order", 1)
        rt.deploy(_app("v2-unguarded"))
        assert rt.status(inv) == "paused"
        rt.kill(inv)  # (or `processor kill ID`)
        with pytest.raises(p.InvocationKilled):
            rt.result(inv)


def test_always_replay_fails_an_unguarded_deploy() -> None:
    with TestRuntime(_app("v1"), always_replay=True) as rt:
        rt.submit("svc/order", 1)
        with pytest.raises(ReplayDivergence, match=r"replayed:  #1 run\('audit'\)"):
            rt.deploy(_app("v2-unguarded"))


def test_the_replayer_accepts_the_guarded_change_and_flags_the_unguarded_one(tmp_path: Path) -> None:
    recorded = tmp_path / "v1.jsonl"
    with TestRuntime(_app("v1")) as rt:
        for n in range(3):
            rt.submit("svc/order", n)
        rt.export_journals(recorded)
    assert replay(_app("v2"), recorded).ok
    report = replay(_app("v2-unguarded"), recorded)
    assert len(report.divergences) == 3
    assert "journaled: #1 awakeable" in report.divergences[0].reason


def test_the_core_answers_a_patch_by_what_the_journal_holds_at_its_position() -> None:
    from processor._engine.core import Entry, EntryKind, Execute, InvocationCore

    run_a = Entry(seq=0, kind=EntryKind.RUN, name="a", value=b"1")
    old = InvocationCore("inv-0-x", [run_a])
    assert old.patched("p") is False and old.next_seq == 0, "a journal from before the patch: no position taken"
    new = InvocationCore("inv-0-x", [])
    d = new.patched("p")
    assert isinstance(d, Execute) and d.seq == 0, "past the journal: the marker goes here"
    marked = InvocationCore("inv-0-x", [Entry(seq=0, kind=EntryKind.PATCH, name="p"),
                                        Entry(seq=1, kind=EntryKind.RUN, name="a", value=b"1")])
    assert marked.patched("p") is True and marked.next_seq == 1
    other = InvocationCore("inv-0-x", [Entry(seq=0, kind=EntryKind.PATCH, name="q")])
    assert other.patched("p") is False, "another patch's marker is not this one"
