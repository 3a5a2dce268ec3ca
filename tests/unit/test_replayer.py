"""``processor.testing.replay``: journals recorded under one version of the code, replayed against
another — a reordering of steps is flagged, unchanged code and new work past the journal are not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import processor as p
from processor._errors import ConfigurationError
from processor.testing import ReplayDivergence, TestRuntime, replay


def _app(flow: str) -> p.App:
    """One service whose handler takes the steps `flow` names ("ab": step a then step b) and then
    waits for an approval; "|" marks the awakeable's place when it is not at the end."""
    app = p.App("replayed", partitions=2)
    svc = app.service("svc")

    @svc.handler()
    async def order(ctx: p.Context, n: int) -> Any:
        before, _, after = flow.partition("|")
        for step in before:
            await ctx.run(step, lambda s=step: f"{s}{n}")
        _awk, approval = ctx.awakeable()
        verdict = await approval
        for step in after:
            await ctx.run(step, lambda s=step: f"{s}{n}")
        return verdict
    return app


def _record(flow: str, tmp_path: Path, invocations: int = 2) -> Path:
    """Run `invocations` of `flow` up to their approval wait and export their journals."""
    path = tmp_path / "journals.jsonl"
    with TestRuntime(_app(flow)) as rt:
        for n in range(invocations):
            rt.submit("svc/order", n)
        assert rt.export_journals(path) == invocations
    return path


def test_the_same_code_replays_every_recorded_journal(tmp_path: Path) -> None:
    report = replay(_app("ab|c"), _record("ab|c", tmp_path))
    assert (report.replayed, report.ok) == (2, True)
    report.check()


def test_reordered_steps_are_flagged_with_both_actions_side_by_side(tmp_path: Path) -> None:
    report = replay(_app("ba|c"), _record("ab|c", tmp_path))
    assert report.replayed == 2 and len(report.divergences) == 2
    d = report.divergences[0]
    assert d.target == "svc/order"
    assert "journaled: #0 run('a')" in d.reason and "replayed:  #0 run('b')" in d.reason
    with pytest.raises(ReplayDivergence, match="2 of 2 recorded invocation"):
        report.check()


def test_a_step_added_past_the_journal_end_is_new_work_not_a_divergence(tmp_path: Path) -> None:
    assert replay(_app("ab|cd"), _record("ab|c", tmp_path)).ok


def test_a_step_removed_before_the_journal_end_is_flagged(tmp_path: Path) -> None:
    [d, _] = replay(_app("a|"), _record("ab|", tmp_path)).divergences  # the journal goes on with b
    assert "journaled: #1 run('b')" in d.reason and "replayed:  #1 awakeable" in d.reason


def test_code_that_finishes_short_of_the_journal_is_flagged(tmp_path: Path) -> None:
    app = p.App("replayed", partitions=2)

    @app.service("svc").handler()
    async def order(ctx: p.Context, n: int) -> int:
        return n  # the new code does nothing before it returns
    [d, _] = replay(app, _record("ab|", tmp_path)).divergences
    assert d.reason == "the code finished after 0 action(s), but the journal goes on with #0 run('a') (up to #2)"


def test_a_handler_missing_from_the_new_code_is_flagged(tmp_path: Path) -> None:
    path = _record("ab|", tmp_path, invocations=1)
    app = p.App("replayed", partitions=2)
    app.service("other")
    [d] = replay(app, path).divergences
    assert d.reason == "no handler svc/order in this code"


def test_a_line_that_is_no_exported_journal_is_refused_with_its_number(tmp_path: Path) -> None:
    path = _record("a|", tmp_path, invocations=1)
    lines = path.read_bytes().splitlines()
    with pytest.raises(ConfigurationError, match="line 2 is not an exported journal"):
        replay(_app("a|"), [lines[0], orjson.dumps({"format": 1, "id": "x"})])


def _state_dir(rt: TestRuntime, root: Path) -> Path:
    """What a processor that ran `rt`'s partitions would leave in its state dir (LMDB stores)."""
    from processor.state.store import PartitionStore

    app_dir = root / rt.app.name
    app_dir.mkdir(parents=True)
    (app_dir / "last-instance-id").write_text("i1\n")
    for n, mem in rt._stores.items():
        store = PartitionStore.open(app_dir / str(n))
        store.apply(list(mem.scan(b"")), 1)
        store.close()
    return root


def test_the_cli_exports_every_invocation_in_flight_byte_for_byte_and_the_replayer_reads_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from processor._cli import main

    with TestRuntime(_app("ab|c")) as rt:
        waiting = {rt.submit("svc/order", n) for n in range(3)}
        state = _state_dir(rt, tmp_path / "state")
        expected = {e["id"]: e for e in map(orjson.loads, rt_lines(rt, tmp_path / "kit.jsonl"))}
    out = tmp_path / "exported.jsonl"
    assert main(["journal", "--app", "replayed", "--offline", "--state-dir", str(state), "--export", str(out)]) == 0
    assert f"exported 3 journal(s) to {out}" in capsys.readouterr().err
    exported = {e["id"]: e for e in map(orjson.loads, out.read_bytes().splitlines())}
    assert set(exported) == waiting and exported == expected
    assert replay(_app("ab|c"), out).ok
    assert len(replay(_app("ba|c"), out).divergences) == 3

    one = tmp_path / "one.jsonl"
    first = sorted(waiting)[0]
    assert main(["journal", first, "--app", "replayed", "--offline", "--state-dir", str(state), "--export",
                 str(one)]) == 0
    assert [orjson.loads(line)["id"] for line in one.read_bytes().splitlines()] == [first]
    assert main(["journal", first, first, "--app", "replayed", "--offline", "--state-dir", str(state)]) == 2


def rt_lines(rt: TestRuntime, path: Path) -> list[bytes]:
    rt.export_journals(path)
    return path.read_bytes().splitlines()


def test_the_admin_api_answers_an_invocation_byte_for_byte_when_asked() -> None:
    from types import SimpleNamespace

    from processor._admin import api
    from processor._journal_export import line_from_exact

    with TestRuntime(_app("ab|")) as rt:
        inv = rt.submit("svc/order", 1)
        engine: Any = SimpleNamespace(workers=rt._workers)
        assert "exact" not in api.invocation(engine, inv)
        answer = api.invocation(engine, inv, exact=True)
    line = line_from_exact(answer["partition"], answer["exact"])
    assert replay(_app("ab|"), [line]).ok and not replay(_app("ba|"), [line]).ok
