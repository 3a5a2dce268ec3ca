"""Shared object handlers run next to a blocked exclusive handler of the same key and read its state."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.e2e.conftest import Spawner
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def test_a_shared_handler_runs_while_an_exclusive_one_of_its_key_is_blocked(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("shared")
    deposits, peeks = kafka.create_topic(f"{name}-dep", 2), kafka.create_topic(f"{name}-peek", 2)
    out = kafka.create_topic(f"{name}-out", 2)
    gate = tmp_path / "gate"
    proc = spawn("tests.apps.shared:app", {
        "SHARED_APP": name, "SHARED_GATE": str(gate), "SHARED_OUTPUT": out,
        "SHARED_DEPOSITS": deposits, "SHARED_PEEKS": peeks}).start().wait_ready()

    def outputs() -> list[dict[str, object]]:
        return [orjson.loads(r.value or b"") for r in kafka.drain(out)]

    kafka.produce(deposits, [(b"acct-1", orjson.dumps({"amount": 10}))])
    kafka.produce(deposits, [(b"acct-1", orjson.dumps({"amount": 5}))])  # queued behind the first
    kafka.produce(peeks, [(b"acct-1", orjson.dumps({"n": 1})), (b"acct-2", orjson.dumps({"n": 2}))])
    wait_until(lambda: len(outputs()) >= 2, 60, "both peeks while the deposit is blocked")
    got = outputs()
    assert {"peek": 1, "balance": 10, "keys": ["balance"]} in got, got
    assert {"peek": 2, "balance": None, "keys": []} in got, got
    assert not any("deposited" in o for o in got), "the exclusive handler is still blocked on its gate"

    gate.touch()
    wait_until(lambda: sum("deposited" in o for o in outputs()) == 2, 60, "both deposits")
    deposited = [o for o in outputs() if "deposited" in o]
    assert deposited == [{"deposited": 10, "balance": 10}, {"deposited": 5, "balance": 15}]
    assert proc.stop() == 0
