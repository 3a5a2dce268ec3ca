"""The engine's routing agrees with the brokers' clients: ``routing.partition_for_key`` picks the
partition librdkafka's Java-compatible ``murmur2_random`` partitioner picks, so a key's records and
its invocations, calls and state meet on one partition."""

from __future__ import annotations

import random

import pytest

from processor._engine import routing
from tests.kafka_support import Kafka

pytestmark = pytest.mark.integration

PARTITIONS = 7


def test_partition_for_key_matches_librdkafkas_murmur2_random_partitioner(kafka: Kafka) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng = random.Random(seed)
    keys = {rng.randbytes(rng.randrange(1, 40)) for _ in range(150)}
    keys |= {f"key-{i}".encode() for i in range(30)} | {"ключ-é-🙂".encode(), b"\x00", b"\xff" * 7}
    topic = kafka.create_topic(kafka.unique("murmur"), PARTITIONS)
    kafka.produce(topic, [(k, b"v") for k in sorted(keys)])  # partitioner=murmur2_random

    records = kafka.drain(topic)
    assert len(records) == len(keys)
    by_key = {r.key: r.partition for r in records}
    wrong = {k: (p, routing.partition_for_key(k, PARTITIONS))
             for k, p in by_key.items() if k is not None and p != routing.partition_for_key(k, PARTITIONS)}
    assert not wrong, f"seed {seed}: (librdkafka, routing) differ for {list(wrong.items())[:5]}"
    assert len(set(by_key.values())) == PARTITIONS, "the keys spread over every partition"
