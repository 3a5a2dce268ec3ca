"""Replaying a journal with code that calls a different action is detected, reported with both
actions side by side, and pauses that invocation only: its key waits, the partition flows on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from processor._engine.records import Status
from tests.e2e import rows
from tests.e2e.conftest import Spawner
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def test_a_replay_that_diverges_from_the_journal_pauses_the_invocation_and_says_why(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("diverge")
    # One partition: every event below shares it, so later offsets are consumed after earlier ones.
    inp, out = kafka.create_topic(f"{name}-in", 1), kafka.create_topic(f"{name}-out", 1)
    env = {"DIVERGE_APP": name, "DIVERGE_INPUT": inp, "DIVERGE_OUTPUT": out}

    def outputs() -> list[dict[str, Any]]:
        return [orjson.loads(r.value or b"") for r in kafka.drain(out)]

    proc = spawn("tests.apps.diverge:app", env).start().wait_ready()
    kafka.produce(inp, [(b"k1", orjson.dumps({"n": 1, "gated": True}))])
    wait_until(lambda: {"key": "k1", "n": 1, "after": "a"} in outputs(), 60, "step 'a' to commit")
    proc.kill()  # the invocation is blocked in its second step, with run('a') journaled

    proc.start({"DIVERGE_FIRST_STEP": "b"}).wait_ready()  # a deploy that calls run('b') first
    proc.wait_log(" paused: ")
    # Same key behind the paused invocation, then another key: both on the one partition.
    kafka.produce(inp, [(b"k1", orjson.dumps({"n": 2})), (b"k2", orjson.dumps({"n": 1}))])
    wait_until(lambda: {"key": "k2", "n": 1, "done": True} in outputs(), 60, "k2 to be processed")
    assert proc.stop() == 0

    assert outputs() == [{"key": "k1", "n": 1, "after": "a"}, {"key": "k2", "n": 1, "done": True}], \
        "k1's next event was consumed before k2's yet must wait behind the paused k1 invocation"
    [report] = [line for line in proc.log().splitlines() if " paused: " in line]
    assert " ERROR " in report and "account/handle" in report
    assert "diverged from its journal at position 0" in report
    assert "journaled: #0 run('a')" in proc.log() and "replayed:  #0 run('b')" in proc.log()

    by_event = {(r.key, orjson.loads(r.input)["n"]): r for r in rows.invocations(tmp_path / "state", name)}
    paused = by_event["k1", 1]
    assert paused.status is Status.PAUSED
    assert paused.paused_reason is not None
    assert "journaled: #0 run('a')" in paused.paused_reason
    assert "replayed:  #0 run('b')" in paused.paused_reason
    assert by_event["k1", 2].status is Status.QUEUED
    assert by_event["k2", 1].status is Status.COMPLETED
    journal = [(e.seq, e.kind, e.name) for e in rows.journal(tmp_path / "state", name, paused.id)]
    assert journal == [(0, "run", "a"), (1, "emit", out)], "the journal keeps what really happened"
