"""Records from a producer that does not partition by murmur2 (confluent-kafka's default
`consistent_random`) land on partitions that do not own their keys. They are forwarded to the
owning partition exactly once, so a key's state is never split: per-key outputs stay gapless and in
order across both producers, across a SIGKILL, and a Client reading the object by key sees it all."""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

import processor as p
from processor._engine import routing
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import TIMEOUT, run
from tests.e2e.rows import invocations
from tests.e2e.verify import read_state
from tests.kafka_support import Kafka, Record, wait_until

pytestmark = pytest.mark.e2e

PARTITIONS, KEYS, PER_PRODUCER = 4, 6, 25
WARNING = "does not use Kafka's default (murmur2) partitioner"


def _foreign_keys() -> list[str]:
    """Keys that librdkafka's default partitioner (consistent_random: crc32 % n) puts on another
    partition than murmur2 does."""
    return [k for k in (f"acct-{i}" for i in range(100))
            if zlib.crc32(k.encode()) % PARTITIONS != routing.partition_for_key(k.encode(), PARTITIONS)][:KEYS]


def _produce_default_partitioner(kafka: Kafka, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """What most Python users write: no `partitioner` setting, so librdkafka's consistent_random."""
    producer = Producer(kafka.config(**{"enable.idempotence": True}))
    errors: list[Any] = []
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=lambda err, _m: err and errors.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0 and not errors, errors


def _event(key: str, src: str, i: int) -> tuple[bytes, bytes]:
    return key.encode(), orjson.dumps({"src": src, "i": i})


def test_records_of_a_non_murmur2_producer_are_forwarded_to_their_keys_owner_exactly_once(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("routed")
    inp, out = kafka.create_topic(f"{name}-in", PARTITIONS), kafka.create_topic(f"{name}-out", PARTITIONS)
    env = {"ROUTED_APP": name, "ROUTED_INPUT": inp, "ROUTED_OUTPUT": out,
           "ROUTED_EFFECTS": str(tmp_path / "effects"), "ROUTED_STEP_S": "0.06"}
    proc = spawn("tests.apps.routed:app", env)
    keys = _foreign_keys()
    assert len(keys) == KEYS

    # Both producers interleave, a batch at a time; one malformed record rides the foreign producer.
    bad_key = keys[0]
    for lo in range(0, PER_PRODUCER, 5):
        batch = range(lo, min(lo + 5, PER_PRODUCER))
        _produce_default_partitioner(kafka, inp, [_event(k, "f", i) for i in batch for k in keys])
        kafka.produce(inp, [_event(k, "m", i) for i in batch for k in keys])  # murmur2_random
        if lo == 10:
            _produce_default_partitioner(kafka, inp, [(bad_key.encode(), b'{"src": "f", "i": ')])
    total = 2 * PER_PRODUCER * KEYS

    inputs = kafka.drain(inp)
    owner = {k: routing.partition_for_key(k.encode(), PARTITIONS) for k in keys}
    by_src: dict[str, set[bool]] = {}
    for r in inputs:
        key = (r.key or b"").decode()
        src = "f" if r.value is None or b'"f"' in r.value else "m"
        by_src.setdefault(src, set()).add(r.partition == owner[key])
    assert by_src == {"f": {False}, "m": {True}}, "the foreign records really landed off their owners"

    proc.start().wait_ready()  # only now: so that the kill below lands while records are in flight
    wait_until(lambda: len(kafka.drain(out)) >= total // 3, 120, "a third of the outputs")
    proc.kill()
    at_kill = len(kafka.drain(out))
    proc.start().wait_ready()
    wait_until(lambda: len(kafka.drain(out)) >= total, 180, f"{total} outputs")

    async def read_all() -> dict[str, Any]:
        async with p.Client(kafka.bootstrap, name) as client:
            return {k: await client.call("tally/read", None, key=k, timeout=TIMEOUT) for k in keys}
    seen_by_client = run(read_all())
    assert proc.stop() == 0
    print(f"outputs committed at the kill: {at_kill} of {total}")
    assert at_kill < total, "the kill landed after the work was done"

    outputs = [orjson.loads(r.value or b"") for r in sorted(kafka.drain(out), key=lambda r: (r.partition, r.offset))]
    counts: dict[str, list[int]] = {}
    order: dict[tuple[str, str], list[int]] = {}
    for o in outputs:
        counts.setdefault(o["key"], []).append(o["count"])
        order.setdefault((o["key"], o["src"]), []).append(o["i"])
    n = 2 * PER_PRODUCER
    assert {k: v for k, v in counts.items() if v != list(range(1, n + 1))} == {}, \
        "every key counts 1..n once: one state per key"
    assert order == {(k, s): list(range(PER_PRODUCER)) for k in keys for s in "fm"}, \
        "each producer's events of a key are processed once, in the order produced"
    assert seen_by_client == dict.fromkeys(keys, n), "a Client reading by key sees all of the key's state"
    assert read_state(tmp_path / "state", name, "tally", "count") == dict.fromkeys(keys, n)

    rows = [r for r in invocations(tmp_path / "state", name) if r.target == "tally/add"]
    sources = Counter((r.source_topic, r.source_partition, r.source_offset) for r in rows)
    assert sorted(sources) == sorted((inp, r.partition, r.offset) for r in inputs if r is not _bad(inputs))
    assert max(sources.values()) == 1, "one invocation per input record"
    assert all(routing.partition_of(r.id) == owner[r.key or ""] for r in rows), "each ran on its key's owner"

    [dead] = kafka.drain(f"{name}.dlq")
    h = {k: v.decode() for k, v in dead.headers}
    bad = _bad(inputs)
    assert dead.partition == owner[bad_key], "the owner dead-letters it, as if it had landed there"
    assert (h["processor.error.class"], h["processor.source.topic"], h["processor.source.partition"],
            h["processor.source.offset"]) == ("SerdeError", inp, str(bad.partition), str(bad.offset))
    assert (dead.key, dead.value) == (bad.key, bad.value)

    logs = [path.read_text(errors="replace") for path in sorted(tmp_path.glob("i1-*.log"))]
    warned = [log.count(WARNING) for log in logs]
    assert warned[0] == 1 and all(w <= 1 for w in warned), f"one warning per topic and process: {warned}"
    assert inp in next(line for line in logs[0].splitlines() if WARNING in line)


def _bad(inputs: list[Record]) -> Record:
    return next(r for r in inputs if r.value is not None and r.value.endswith(b'"i": '))
