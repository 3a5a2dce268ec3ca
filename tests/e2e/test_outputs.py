"""No emit ever creates a topic: a declared output is created at start with its partition count, and an
emit to a missing topic fails its attempt loudly (UnknownTopicError) until the topic is created, after
which the invocation finishes and its record is written once. Without this, Kafka's auto-creation made
a one-partition topic that broke the key layout of whoever consumed it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaException

from tests.e2e.conftest import Spawner
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def _count(kafka: Kafka, topic: str) -> int:
    """Records in `topic` (read_committed), or -1 while a just-created topic's leaders settle."""
    try:
        return len(kafka.drain(topic))
    except KafkaException:
        return -1


def _exists(kafka: Kafka, topic: str) -> bool:
    return topic in kafka.admin.list_topics(timeout=10).topics  # the whole list: a lookup by name could create it


def test_a_declared_output_is_created_and_an_emit_to_a_missing_topic_waits_for_it(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("outputs")
    inp = kafka.create_topic(f"{name}-in", 2)
    declared, missing = f"{name}-declared", f"{name}-missing"
    proc = spawn("tests.apps.outputs:app", {"OUTPUTS_APP": name, "OUTPUTS_INPUT": inp, "OUTPUTS_DECLARED": declared,
                                            "OUTPUTS_DECLARED_PARTITIONS": "3"}).start().wait_ready()
    assert kafka.partitions(declared) == 3, "created at start with the declared partition count"

    kafka.produce(inp, [(b"a", orjson.dumps({"to": declared, "n": "1"})),
                        (b"b", orjson.dumps({"to": missing, "n": "2"}))])
    wait_until(lambda: _count(kafka, declared) == 1, 60, "the record to the declared topic")
    proc.wait_log("UnknownTopicError", 60)
    proc.wait_log(f"ctx.emit to topic {missing!r}: no such topic", 10)
    assert not _exists(kafka, missing), "the emit must not have auto-created the topic"

    kafka.create_topic(missing, 5)  # the operator creates it: the invocation's next attempt finds it
    wait_until(lambda: _count(kafka, missing) == 1, 90, "the record to the topic created afterwards")
    assert kafka.partitions(missing) == 5
    assert proc.stop() == 0
    assert [orjson.loads(r.value or b"") for r in kafka.drain(missing)] == [{"key": "b", "n": "2"}]
    assert [orjson.loads(r.value or b"") for r in kafka.drain(declared)] == [{"key": "a", "n": "1"}]


def test_a_declared_output_that_is_missing_without_partitions_refuses_the_start(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("outputs")
    inp = kafka.create_topic(f"{name}-in", 2)
    proc = spawn("tests.apps.outputs_undeclared:app", {"OUTPUTS_APP": name, "OUTPUTS_INPUT": inp,
                                                       "OUTPUTS_DECLARED": f"{name}-absent"}).start()
    assert proc.wait_exit(60) != 0
    assert f"output topic '{name}-absent' does not exist" in proc.log()
    assert "Traceback" not in proc.log()
    assert not _exists(kafka, f"{name}-absent")
