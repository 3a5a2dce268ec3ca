"""A processor running tests/apps/durable.py on its own topics, and what the tests read back: outputs,
step side effects (one line per body run), invocation rows and journals, and a Client."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

import processor as p
from processor._engine.core import Entry
from processor._engine.records import InvocationRow
from tests.e2e import rows
from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import Kafka, wait_until

T = TypeVar("T")
PARTITIONS = 4
TIMEOUT = timedelta(seconds=90)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive one Client coroutine from a synchronous test."""
    return asyncio.run(coro)


class Durable:
    """The durable app's topics, files and processor (not started: ``.proc.start()``)."""

    def __init__(self, kafka: Kafka, spawn: Spawner, tmp_path: Path, *, suspend_s: float = 5.0) -> None:
        self.kafka = kafka
        self.name = kafka.unique("durable")
        topics = {t: kafka.create_topic(f"{self.name}-{t}", PARTITIONS)
                  for t in ("naps", "chains", "asks", "races", "signups", "out")}
        self.topics = topics
        self.out = topics["out"]
        self.state_dir = tmp_path / "state"
        self.effects_path, self.gate = tmp_path / "effects", tmp_path / "gate"
        self.env = {"DURABLE_APP": self.name, "DURABLE_EFFECTS": str(self.effects_path),
                    "DURABLE_OUTPUT": self.out, "DURABLE_GATE": str(self.gate),
                    "DURABLE_SUSPEND": str(suspend_s),
                    **{f"DURABLE_{t.upper()}": topics[t] for t in ("naps", "chains", "asks", "races", "signups")}}
        self.proc: ProcessorProcess = spawn("tests.apps.durable:app", self.env)

    def produce(self, topic: str, key: str, value: Any) -> None:
        self.kafka.produce(self.topics[topic], [(key.encode(), orjson.dumps(value))])

    def outputs(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value or b"") for r in self.kafka.drain(self.out)]

    def outputs_of(self, ev_id: str) -> list[dict[str, Any]]:
        return [o for o in self.outputs() if o.get("id") == ev_id]

    def wait_output(self, ev_id: str, field: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first output of event `ev_id` carrying `field`, waiting for it."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [o for o in self.outputs_of(ev_id) if field in o]
            return bool(found)
        wait_until(seen, timeout, f"an output {field!r} of {ev_id}", interval=0.2)
        return found[0]

    def effects(self) -> Counter[str]:
        if not self.effects_path.exists():
            return Counter()
        return Counter(self.effects_path.read_text().splitlines())

    def client(self) -> p.Client:
        return p.Client(self.kafka.bootstrap, self.name)

    def invocations(self) -> list[InvocationRow]:
        return rows.invocations(self.state_dir, self.name)

    def row(self, invocation_id: str) -> InvocationRow | None:
        return next((r for r in self.invocations() if r.id == invocation_id), None)

    def rows_of(self, target: str) -> list[InvocationRow]:
        return [r for r in self.invocations() if r.target == target]

    def journal(self, invocation_id: str) -> list[Entry]:
        return rows.journal(self.state_dir, self.name, invocation_id)

    def wait_journal(self, invocation_id: str, pred: Any, what: str, timeout: float = 60.0) -> list[Entry]:
        """The committed journal of `invocation_id` once `pred(entries)` holds."""
        got: list[Entry] = []

        def ok() -> bool:
            got[:] = self.journal(invocation_id)
            return bool(pred(got))
        wait_until(ok, timeout, what, interval=0.1)
        return got
