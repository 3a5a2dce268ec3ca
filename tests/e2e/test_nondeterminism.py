"""Replaying a journal with code that calls a different action is detected, reported with both
actions side by side, and pauses that invocation only: its key waits, the partition flows on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor._engine.records import Status
from tests.e2e import rows
from tests.e2e.conftest import Spawner
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


class Diverged:
    """A processor whose k1 invocation journaled run('a'), was SIGKILLed, and was replayed by a
    deploy calling run('b') first; then k1 and k2 got one more event each (k1's first)."""

    def __init__(self, kafka: Kafka, spawn: Spawner) -> None:
        self.kafka, self.name = kafka, kafka.unique("diverge")
        # One partition: every event shares it, so later offsets are consumed after earlier ones.
        inp, self.out = kafka.create_topic(f"{self.name}-in", 1), kafka.create_topic(f"{self.name}-out", 1)
        self.proc = spawn("tests.apps.diverge:app", {"DIVERGE_APP": self.name, "DIVERGE_INPUT": inp,
                                                     "DIVERGE_OUTPUT": self.out}).start().wait_ready()
        kafka.produce(inp, [(b"k1", orjson.dumps({"n": 1, "gated": True}))])
        wait_until(lambda: {"key": "k1", "n": 1, "after": "a"} in self.outputs(), 60, "step 'a' to commit")
        self.proc.kill()  # the invocation is blocked in its second step, with run('a') journaled

        self.proc.start({"DIVERGE_FIRST_STEP": "b"}).wait_ready()  # a deploy calling run('b') first
        self.proc.wait_log(" paused: ")
        kafka.produce(inp, [(b"k1", orjson.dumps({"n": 2})), (b"k2", orjson.dumps({"n": 1}))])
        wait_until(lambda: {"key": "k2", "n": 1, "done": True} in self.outputs(), 60, "k2 to be processed")
        assert self.proc.stop() == 0

    def outputs(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value or b"") for r in self.kafka.drain(self.out)]


def test_a_replay_that_diverges_from_the_journal_pauses_the_invocation_and_says_why(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    run = Diverged(kafka, spawn)
    name, out, proc, outputs = run.name, run.out, run.proc, run.outputs

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

    # The CLI shows it too, next to the running processor.
    cli = subprocess.run([sys.executable, "-m", "processor", "invocations", "--state-dir", str(tmp_path / "state"),
                          "--app", name, "--status", "paused"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert paused.id in cli.stdout and "diverged from its journal at position 0" in cli.stdout
    assert "journaled: #0 run('a')" in cli.stdout and "1 invocation(s)" in cli.stdout


def test_a_paused_invocation_resumes_from_its_journal_on_a_fixed_deploy_and_its_key_flows_again(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    run = Diverged(kafka, spawn)
    run.proc.start({"DIVERGE_UNBLOCK": "1"}).wait_ready()  # the original code again, unblocked
    wait_until(lambda: len(run.outputs()) >= 4, 60, "k1's two invocations to finish")
    assert run.proc.stop() == 0
    assert run.outputs() == [{"key": "k1", "n": 1, "after": "a"}, {"key": "k2", "n": 1, "done": True},
                             {"key": "k1", "n": 1, "done": True}, {"key": "k1", "n": 2, "done": True}]
    statuses = {(r.key, orjson.loads(r.input)["n"]): (r.status, r.paused_reason)
                for r in rows.invocations(tmp_path / "state", run.name)}
    assert statuses == {k: (Status.COMPLETED, None) for k in [("k1", 1), ("k1", 2), ("k2", 1)]}
