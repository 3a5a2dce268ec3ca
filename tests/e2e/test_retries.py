"""Failures follow their policies: a failing step is retried with its RetryPolicy's backoff, gives up
with StepFailedError, and a TerminalError is never retried; a handler exception that is not
terminal retries the invocation (never drops it), a terminal one fails it once.

One processor serves every test of this module: each case is its own invocation of one service."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor._engine.records import InvocationRow, Status
from tests.e2e import rows
from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

CASES = ["flaky_step", "failing_step", "terminal_step", "terminal_handler", "flaky_handler"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    kafka: Kafka
    app: str
    out: str
    dir: Path
    state_dir: Path

    def outputs(self, case: str) -> list[dict[str, Any]]:
        values = [orjson.loads(r.value or b"") for r in self.kafka.drain(self.out)]
        return [v for v in values if v["case"] == case]

    def wait_outputs(self, case: str, n: int = 1) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.outputs(case)) >= n, 60, f"{n} output(s) of {case}")
        return self.outputs(case)

    def lines(self, case: str, what: str) -> list[str]:
        path = self.dir / f"{case}.{what}"
        return path.read_text().splitlines() if path.exists() else []

    def row(self, case: str) -> InvocationRow:
        found = [r for r in rows.invocations(self.state_dir, self.app)
                 if orjson.loads(r.input)["case"] == case]
        assert len(found) == 1, found
        return found[0]

    def wait_status(self, case: str, status: Status) -> InvocationRow:
        wait_until(lambda: self.row(case).status is status, 30, f"{case} to be {status.value}")
        return self.row(case)


@pytest.fixture(scope="module")
def run(kafka: Kafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("retries")
    app = kafka.unique("retries")
    inp, out = kafka.create_topic(f"{app}-in", 1), kafka.create_topic(f"{app}-out", 1)
    (tmp / "files").mkdir()
    proc = ProcessorProcess(spec="tests.apps.retries:app", bootstrap=kafka.bootstrap,
                            state_dir=tmp / "state", instance_id="i1", log_dir=tmp,
                            env={"RETRIES_APP": app, "RETRIES_INPUT": inp, "RETRIES_OUTPUT": out,
                                 "RETRIES_DIR": str(tmp / "files")})
    try:
        proc.start().wait_ready()
        kafka.produce(inp, [(c.encode(), orjson.dumps({"case": c})) for c in CASES])
        yield Run(kafka=kafka, app=app, out=out, dir=tmp / "files", state_dir=tmp / "state")
        assert proc.stop() == 0
    finally:
        proc.ensure_dead()


def test_a_failing_step_is_retried_with_growing_backoff_until_it_succeeds(run: Run) -> None:
    assert run.wait_outputs("flaky_step") == [{"case": "flaky_step", "result": "ok on attempt 4"}]
    attempts = [line.split() for line in run.lines("flaky_step", "steps")]
    assert [int(a) for a, _, _ in attempts] == [1, 2, 3, 4], "current_step().attempt counts up"
    assert len({key for _, _, key in attempts}) == 1, "one idempotency key across attempts"
    times = [float(t) for _, t, _ in attempts]
    gaps_ms = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    for gap, delay in zip(gaps_ms, [100, 200, 400], strict=True):
        assert delay - 2 <= gap <= delay + 2000, f"gaps {gaps_ms} do not follow 100/200/400 ms"
    assert run.lines("flaky_step", "entries") == ["entered"], "a step retry does not re-run the handler"
    row = run.wait_status("flaky_step", Status.COMPLETED)
    [step] = [e for e in rows.journal(run.state_dir, run.app, row.id) if e.kind == "run"]
    assert (step.attempts, step.completed, step.failure) == (4, True, None)


def test_a_step_that_always_fails_raises_step_failed_in_the_handler_after_max_attempts(run: Run) -> None:
    [out] = run.wait_outputs("failing_step")
    assert out["error"] == "StepFailedError"
    assert "'failing' failed after 3 attempt(s)" in out["message"]
    assert "ConnectionError: attempt 3 failed" in out["message"]
    assert [line.split()[0] for line in run.lines("failing_step", "steps")] == ["1", "2", "3"]
    assert run.wait_status("failing_step", Status.COMPLETED).failure is None  # the handler handled it


def test_a_step_raising_terminal_error_runs_once_and_the_error_reaches_the_handler(run: Run) -> None:
    assert run.wait_outputs("terminal_step") == [{"case": "terminal_step", "error": "TerminalError",
                                                  "message": "card declined", "error_type": "CardDeclined"}]
    assert len(run.lines("terminal_step", "steps")) == 1, "a TerminalError is never retried"
    row = run.wait_status("terminal_step", Status.COMPLETED)
    [step] = [e for e in rows.journal(run.state_dir, run.app, row.id) if e.kind == "run"]
    assert step.failure is not None and (step.failure.type, step.attempts) == ("CardDeclined", 1)


def test_a_handler_raising_terminal_error_fails_its_invocation_once_without_retry(run: Run) -> None:
    row = run.wait_status("terminal_handler", Status.FAILED)
    assert row.failure is not None
    assert (row.failure.type, row.failure.message) == ("TerminalError", "order rejected: out of stock")
    assert row.attempt == 0 and row.retry_at_ms is None and row.finished_ms is not None
    assert run.lines("terminal_handler", "entries") == ["entered"]
    assert run.outputs("terminal_handler") == [{"case": "terminal_handler", "entered": 1}]


def test_a_handler_exception_that_is_not_terminal_is_retried_until_it_completes(run: Run) -> None:
    row = run.wait_status("flaky_handler", Status.COMPLETED)
    assert (row.attempt, row.failure, orjson.loads(row.result or b"")) == (2, None, "flaky_handler")
    assert run.lines("flaky_handler", "entries") == ["entered"] * 3
    # Each output is emitted once: the retries replay the journaled emit instead of producing it again.
    assert run.outputs("flaky_handler") == [{"case": "flaky_handler", "before_failure": True},
                                            {"case": "flaky_handler", "done_on_attempt": 3}]
