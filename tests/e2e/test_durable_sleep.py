"""A durable sleep is a timer row, not a coroutine: it survives SIGKILL, and one that fell due while
no processor ran fires as soon as the next one owns the partition."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from processor._engine.core import Entry
from processor._engine.records import Status
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import Durable
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def _sleeping(d: Durable, ev_id: str) -> tuple[str, Entry]:
    """Wait until the nap of `ev_id` has committed its pending sleep; its invocation id and entry."""
    def found() -> tuple[str, Entry] | None:
        for r in d.rows_of("timer/nap"):
            if ev_id.encode() in r.input:
                sleeps = [e for e in d.journal(r.id) if e.kind == "sleep" and e.pending]
                if sleeps:
                    return r.id, sleeps[0]
        return None
    wait_until(lambda: found() is not None, 60, f"{ev_id}'s sleep to be journaled")
    got = found()
    assert got is not None
    return got


def test_a_sleeping_handler_survives_sigkill_and_completes_once_after_restart(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    d.produce("naps", "n1", {"id": "n1", "seconds": 3})
    _inv, entry = _sleeping(d, "n1")
    assert entry.due_ms is not None
    assert time.time() * 1000 < entry.due_ms, "killed during the sleep"
    d.proc.kill()
    assert d.effects() == {"before:n1": 1}

    d.proc.start().wait_ready()
    d.wait_output("n1", "slept")
    assert time.time() * 1000 >= entry.due_ms, "the sleep was not cut short by the restart"
    assert d.proc.stop() == 0
    assert d.effects() == {"before:n1": 1, "after:n1": 1}
    assert d.outputs() == [{"id": "n1", "slept": 3}]


def test_a_sleep_that_fell_due_while_the_processor_was_down_fires_at_start(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    d.produce("naps", "n2", {"id": "n2", "seconds": 3})
    _inv, entry = _sleeping(d, "n2")
    d.proc.kill()
    due_ms = entry.due_ms
    assert due_ms is not None
    wait_until(lambda: time.time() * 1000 > due_ms + 1000, 10, "the sleep to fall due while down")

    d.proc.start().wait_ready()
    ready = time.monotonic()
    d.wait_output("n2", "slept", timeout=30)
    assert time.monotonic() - ready < 5.0, "the overdue timer fired promptly after the restart"
    assert d.proc.stop() == 0
    assert d.effects() == {"before:n2": 1, "after:n2": 1}
    assert d.outputs() == [{"id": "n2", "slept": 3}]


def test_a_suspended_sleeper_is_resumed_by_its_timer_after_a_sigkill(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path, suspend_s=0.3)
    d.proc.start().wait_ready()
    d.produce("naps", "n3", {"id": "n3", "seconds": 4})
    inv, entry = _sleeping(d, "n3")
    wait_until(lambda: (r := d.row(inv)) is not None and r.status is Status.SUSPENDED, 10, "n3 to be suspended")
    assert entry.due_ms is not None and time.time() * 1000 < entry.due_ms, "suspended before it was due"
    d.proc.kill()

    d.proc.start().wait_ready()
    d.wait_output("n3", "slept")
    assert d.proc.stop() == 0
    assert d.effects() == {"before:n3": 1, "after:n3": 1}
    row = d.row(inv)
    assert row is not None and row.status is Status.COMPLETED


def test_many_sleepers_suspended_and_woken_answer_exactly_once_across_repeated_sigkills(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    naps, kills = 300, 3
    d = Durable(kafka, spawn, tmp_path, suspend_s=0.3)
    d.proc.start().wait_ready()
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"chaos seed {seed}")
    d.kafka.produce(d.topics["naps"], [(f"z{i}".encode(), orjson.dumps({"id": f"z{i}", "seconds": rng.uniform(1, 12)}))
                                       for i in range(naps)])
    seen = []
    for target in sorted(rng.uniform(0.05, 0.6) * naps for _ in range(kills)):
        wait_until(lambda t=target: len(d.outputs()) >= t, 60, f"{int(target)} naps to end")
        time.sleep(rng.uniform(0, 0.3))
        d.proc.kill()
        seen.append(len(d.outputs()))
        d.proc.start().wait_ready()
    wait_until(lambda: len(d.outputs()) >= naps, 90, "every nap to end")
    assert d.proc.stop() == 0
    print(f"outputs at each kill: {seen}")
    assert sorted(o["id"] for o in d.outputs()) == sorted(f"z{i}" for i in range(naps)), f"seed {seed}"
    rows = d.rows_of("timer/nap")
    assert len(rows) == naps and {r.status for r in rows} == {Status.COMPLETED}
    assert {k for k, n in d.effects().items() if k.startswith("after:")} == {f"after:z{i}" for i in range(naps)}
