"""A step's retry backoff is a durable timer: a processor SIGKILLed during the wait resumes the step
with its attempt count and its due time, instead of starting the policy over."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.e2e import rows
from tests.e2e.conftest import Spawner
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def test_a_step_backoff_survives_sigkill_and_keeps_its_attempt_count_and_due_time(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("backoff")
    inp, out = kafka.create_topic(f"{name}-in", 1), kafka.create_topic(f"{name}-out", 1)
    files, state_dir = tmp_path / "files", tmp_path / "state"
    files.mkdir()
    proc = spawn("tests.apps.retries:app", {"RETRIES_APP": name, "RETRIES_INPUT": inp, "RETRIES_OUTPUT": out,
                                            "RETRIES_DIR": str(files)}).start().wait_ready()
    kafka.produce(inp, [(b"d", orjson.dumps({"case": "durable_backoff"}))])

    def pending_retry() -> int | None:
        for row in rows.invocations(state_dir, name):
            for e in rows.journal(state_dir, name, row.id):
                if e.kind == "run" and e.retry_at_ms is not None:
                    return e.retry_at_ms
        return None
    wait_until(lambda: pending_retry() is not None, 30, "the first failed attempt to commit its retry")
    retry_at_ms = pending_retry()
    assert retry_at_ms is not None
    proc.kill()
    attempts = (files / "durable_backoff.steps").read_text().splitlines()
    assert [a.split()[0] for a in attempts] == ["1"], "killed inside the first backoff"

    proc.start().wait_ready()
    wait_until(lambda: any(b"durable_backoff" in (r.value or b"") for r in kafka.drain(out)), 60, "the output")
    assert proc.stop() == 0
    assert [orjson.loads(r.value or b"") for r in kafka.drain(out)] == [
        {"case": "durable_backoff", "result": "ok on attempt 3"}]
    attempts = [line.split() for line in (files / "durable_backoff.steps").read_text().splitlines()]
    assert [int(a) for a, _, _ in attempts] == [1, 2, 3], "the attempt count continued across the crash"
    assert float(attempts[1][1]) * 1000 >= retry_at_ms - 2, "attempt 2 ran before its backoff was due"
    assert float(attempts[2][1]) - float(attempts[1][1]) >= 2.0 - 0.002, "then the policy's 2 s backoff"
