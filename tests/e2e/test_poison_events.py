"""Poison events on the real broker (decision 011): an event whose handler raises on every attempt is
retried within its handler's bound (3 attempts here), then either dead-lettered — its input in
`<app>.dlq` with the error, attempts and handler, its key's later events processed in order — or
paused, holding its key (the CLI says so) until `processor retry` after a fix runs it and the waiting
events follow. The metrics count both, by handler and reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor._engine.records import Status
from tests.e2e import rows
from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.e2e.test_admin import Admin
from tests.e2e.test_cluster_cli import Cli
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "e2e-poison-token"
ATTEMPTS = 3  # the handlers' RetryPolicy(max_attempts=3)


@dataclass(kw_only=True)
class Poison:
    kafka: Kafka
    name: str
    pause_in: str
    dead_in: str
    out: str
    dir: Path
    fix: Path
    state_dir: Path
    proc: ProcessorProcess

    def outputs(self, obj: str) -> list[dict[str, Any]]:
        """What `obj`'s handler emitted: key, n and the key's count of events seen."""
        picked = []
        for r in self.kafka.drain(self.out):
            v = orjson.loads(r.value or b"")
            if v["obj"] == obj:
                picked.append({"key": v["key"], "n": v["n"], "seen": v["seen"]})
        return picked

    def attempts(self, obj: str, key: str, n: int) -> int:
        path = self.dir / f"{obj}-{key}-{n}.attempts"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def row(self, obj: str, key: str, n: int) -> Any:
        found = [r for r in rows.invocations(self.state_dir, self.name)
                 if r.service == obj and r.key == key and orjson.loads(r.input)["n"] == n]
        return found[0] if found else None

    def status(self, obj: str, key: str, n: int) -> Status | None:
        row = self.row(obj, key, n)
        return None if row is None else row.status


@pytest.fixture
def poison(kafka: Kafka, spawn: Spawner, tmp_path: Path) -> Poison:
    name = kafka.unique("exhausted")
    # One partition per topic: a key's later events are consumed after its poison one.
    pause_in, dead_in = kafka.create_topic(f"{name}-pause", 1), kafka.create_topic(f"{name}-dead", 1)
    out = kafka.create_topic(f"{name}-out", 1)
    (tmp_path / "files").mkdir()
    proc = spawn("tests.apps.exhausted:app",
                 {"EXHAUSTED_APP": name, "EXHAUSTED_PAUSE_INPUT": pause_in, "EXHAUSTED_DEAD_INPUT": dead_in,
                  "EXHAUSTED_OUTPUT": out, "EXHAUSTED_DIR": str(tmp_path / "files"),
                  "EXHAUSTED_FIX": str(tmp_path / "fixed"), "PROCESSOR_ADMIN_TOKEN": TOKEN},
                 args=["--admin-port", "0"])
    proc.start().wait_ready()
    return Poison(kafka=kafka, name=name, pause_in=pause_in, dead_in=dead_in, out=out, dir=tmp_path / "files",
                  fix=tmp_path / "fixed", state_dir=tmp_path / "state", proc=proc)


def _events(*events: tuple[str, int, bool]) -> list[tuple[bytes | None, bytes | None]]:
    """(key, n, poison): a poison event lacks the "amount" its handler reads."""
    return [(k.encode(), orjson.dumps({"n": n} if bad else {"n": n, "amount": 10 * n})) for k, n, bad in events]


def test_an_always_raising_event_is_dead_lettered_after_its_retries_and_its_key_flows_on_in_order(
        poison: Poison) -> None:
    kafka = poison.kafka
    events = _events(("k1", 1, True), ("k1", 2, False), ("k2", 1, False), ("k1", 3, False))
    kafka.produce(poison.dead_in, events)
    wait_until(lambda: len(poison.outputs("dead")) >= 3, 90, "the three good events to be processed")
    # k1's poison event ran 3 times, bumping "seen" once (its journaled write, replayed by the
    # retries, committed with the failed attempt): k1's next events count it.
    by_key = {k: [(o["n"], o["seen"]) for o in poison.outputs("dead") if o["key"] == k] for k in ("k1", "k2")}
    assert by_key == {"k1": [(2, 2), (3, 3)], "k2": [(1, 1)]}, "k1's later events in order, after the poison one"
    assert poison.attempts("dead", "k1", 1) == ATTEMPTS

    dlq = f"{poison.name}.dlq"
    wait_until(lambda: len(kafka.drain(dlq)) >= 1, 30, "the poison event in the DLQ")
    [dead] = kafka.drain(dlq)
    assert (dead.key, dead.value) == events[0], "the DLQ keeps the original record"
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers == {"processor.error": "KeyError: 'amount'", "processor.error.class": "RetriesExhausted",
                       "processor.error.type": "KeyError", "processor.handler": "dead/take_or_dead_letter",
                       "processor.invocation.id": poison.row("dead", "k1", 1).id,
                       "processor.attempts": str(ATTEMPTS), "processor.source.topic": poison.dead_in,
                       "processor.source.partition": "0", "processor.source.offset": "0"}

    row = poison.row("dead", "k1", 1)
    assert row.status is Status.FAILED and row.attempt == ATTEMPTS
    assert row.failure.message == f"dead-lettered to {dlq} after {ATTEMPTS} attempt(s): 'amount'"

    metrics = Admin(poison.proc).metrics()
    handler = (("handler", "dead/take_or_dead_letter"), ("reason", "retries_exhausted"))
    assert metrics[("processor_invocations_dead_lettered_total", handler)] == 1
    assert metrics[("processor_dead_letters_total", (("reason", "RetriesExhausted"),))] == 1
    assert metrics[("processor_invocation_retries_total", (("handler", "dead/take_or_dead_letter"),))] == ATTEMPTS - 1
    assert not [k for k in metrics if k[0] == "processor_invocations_paused_total"]
    assert poison.proc.stop() == 0


def test_a_paused_event_holds_its_key_until_retried_after_a_fix_then_the_waiting_events_follow(
        poison: Poison) -> None:
    kafka, cli = poison.kafka, Cli(poison.kafka, poison.name)
    kafka.produce(poison.pause_in, _events(("k1", 1, True), ("k1", 2, False), ("k2", 1, False)))
    wait_until(lambda: poison.status("pause", "k1", 1) is Status.PAUSED, 90, "the poison event to pause")
    wait_until(lambda: poison.outputs("pause") == [{"key": "k2", "n": 1, "seen": 1}], 60, "k2 to flow on")
    assert poison.attempts("pause", "k1", 1) == ATTEMPTS
    assert poison.status("pause", "k1", 2) is Status.QUEUED, "k1's next event waits behind the paused one"
    assert len(kafka.drain(f"{poison.name}.dlq")) == 0

    # The operator sees it, and that it holds its key.
    found: list[dict[str, Any]] = []

    def listed() -> bool:
        code, found[:], _ = cli.json_lines("invocations", "--status", "paused")
        return code == 0 and len(found) == 1
    wait_until(listed, 60, "`processor invocations --status paused` to list it", interval=0.5)
    [paused] = found
    assert paused["key"] == "k1" and paused["attempt"] == ATTEMPTS
    assert paused["paused_reason"].startswith(f"retries exhausted after {ATTEMPTS} attempt(s): KeyError: 'amount'")
    assert "holds key 'k1' of pause: later invocations of the key wait until it is retried or killed" \
        in paused["paused_reason"]
    text = cli.run("invocations", "--status", "paused")
    assert text.returncode == 0 and "holds key 'k1'" in text.stdout, text.stderr
    journal = cli.run("journal", paused["id"])
    assert journal.returncode == 0, journal.stderr
    assert "error       KeyError: 'amount'" in journal.stdout and '"n":1' in journal.stdout
    assert "paused      retries exhausted after 3 attempt(s)" in journal.stdout
    metrics = Admin(poison.proc).metrics()
    labels = (("handler", "pause/take_or_pause"), ("reason", "retries_exhausted"))
    assert metrics[("processor_invocations_paused_total", labels)] == 1

    # Paused: no timer runs it again (the CLI calls above took longer than the 400 ms a 4th backoff would).
    assert poison.attempts("pause", "k1", 1) == ATTEMPTS

    poison.fix.touch()  # the fix is deployed; the operator retries
    retried = cli.run("retry", paused["id"], token=TOKEN)
    assert retried.returncode == 0, retried.stderr
    wait_until(lambda: len(poison.outputs("pause")) >= 3, 60, "the retried event and the one behind it")
    assert poison.outputs("pause") == [{"key": "k2", "n": 1, "seen": 1}, {"key": "k1", "n": 1, "seen": 1},
                                       {"key": "k1", "n": 2, "seen": 2}]
    assert poison.attempts("pause", "k1", 1) == ATTEMPTS + 1
    wait_until(lambda: poison.status("pause", "k1", 1) is Status.COMPLETED, 30, "the retried one to complete")
    row = poison.row("pause", "k1", 1)
    assert (row.paused_reason, row.failure) == (None, None)
    assert poison.proc.stop() == 0


def test_a_paused_event_runs_again_when_the_fixed_code_is_deployed_and_its_key_follows(poison: Poison) -> None:
    poison.kafka.produce(poison.pause_in, _events(("k1", 1, True), ("k1", 2, False)))
    wait_until(lambda: poison.status("pause", "k1", 1) is Status.PAUSED, 90, "the poison event to pause")
    assert poison.status("pause", "k1", 2) is Status.QUEUED and poison.outputs("pause") == []
    assert poison.proc.stop() == 0

    poison.fix.touch()  # the new deploy: its start replays paused invocations
    poison.proc.start().wait_ready()
    wait_until(lambda: len(poison.outputs("pause")) >= 2, 60, "the paused event and the one behind it")
    assert poison.outputs("pause") == [{"key": "k1", "n": 1, "seen": 1}, {"key": "k1", "n": 2, "seen": 2}]
    assert poison.attempts("pause", "k1", 1) == ATTEMPTS + 1
    assert poison.proc.stop() == 0
