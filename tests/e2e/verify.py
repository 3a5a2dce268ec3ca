"""The counter app (tests/apps/counter.py) on topics of its own, and reading what processors left
behind: per-key outputs checked against the recomputation (gapless counts) and the state rows in LMDB."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from processor._serde import JsonSerde
from processor.state import keys
from processor.state.store import PartitionStore
from tests.kafka_support import Kafka, Record


def counter_env(kafka: Kafka, tmp_path: Path, partitions: int = 4) -> tuple[dict[str, str], str, str]:
    """The counter app's environment on fresh topics, its input topic and its output topic."""
    name = kafka.unique("counter")
    inp, out = kafka.create_topic(f"{name}-in", partitions), kafka.create_topic(f"{name}-out", partitions)
    env = {"COUNTER_APP": name, "COUNTER_INPUT": inp, "COUNTER_OUTPUT": out,
           "COUNTER_EFFECTS": str(tmp_path / "effects")}
    return env, inp, out


def counter_events(n: int, keys: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"key-{i % keys}".encode(), orjson.dumps({"i": i})) for i in range(n)]


def produce_paced(kafka: Kafka, topic: str, events: list[tuple[bytes | None, bytes | None]],
                  seconds: float) -> None:
    chunks = 100
    size = -(-len(events) // chunks)
    for i in range(0, len(events), size):
        kafka.produce(topic, events[i:i + size])
        time.sleep(seconds / chunks)


def assert_gapless(counts: dict[str, list[int]], expected: int, keys: int) -> None:
    """Every key counted 1, 2, ..., expected: nothing lost, nothing twice."""
    assert len(counts) == keys
    bad = {k: (len(v), v[:5]) for k, v in counts.items() if v != list(range(1, expected + 1))}
    assert not bad, f"keys with gaps or duplicates: {dict(list(bad.items())[:5])}"


def counts_by_key(records: list[Record]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        d = orjson.loads(r.value or b"")
        out.setdefault(d["key"], []).append(d["count"])
    return out


def read_state(state_dir: Path, app: str, obj: str, name: str,
               partitions: Iterable[int] | None = None) -> dict[str, object]:
    """Every key's value of state entry `name` of object `obj`, across all partition stores (or
    those of `partitions`)."""
    values: dict[str, object] = {}
    serde = JsonSerde()
    only = None if partitions is None else {str(p) for p in partitions}
    for part in sorted((state_dir / app).iterdir()):
        if not part.is_dir() or (only is not None and part.name not in only):
            continue
        store = PartitionStore.open(part)
        try:
            for k, v in store.scan(keys.STATE):
                o, key, n = keys.parse_state_key(k)
                if o == obj and n == name:
                    values[key] = serde.deserialize(v)
        finally:
            store.close()
    return values
