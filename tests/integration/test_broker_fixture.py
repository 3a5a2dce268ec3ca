"""The broker fixture itself: the Kafka guarantees every later test relies on hold on it."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException, Producer

from tests.kafka_support import Kafka

pytestmark = pytest.mark.integration


def test_transactional_round_trip_is_visible_to_read_committed(kafka: Kafka) -> None:
    topic = kafka.create_topic(partitions=3)
    with kafka.transactional_producer() as p:
        p.begin_transaction()
        for i in range(30):
            p.produce(topic, key=b"k%d" % i, value=b"v%d" % i)
        p.commit_transaction(30)
    got = kafka.drain(topic)
    assert sorted(r.value for r in got if r.value) == sorted(b"v%d" % i for i in range(30))


def test_aborted_transaction_is_invisible_to_read_committed(kafka: Kafka) -> None:
    topic = kafka.create_topic()
    with kafka.transactional_producer() as p:
        p.begin_transaction()
        p.produce(topic, value=b"committed-1")
        p.commit_transaction(30)
        p.begin_transaction()
        p.produce(topic, value=b"aborted")
        p.flush(10)
        p.abort_transaction(30)
        p.begin_transaction()
        p.produce(topic, value=b"committed-2")
        p.commit_transaction(30)
    assert [r.value for r in kafka.drain(topic)] == [b"committed-1", b"committed-2"]
    uncommitted = [r.value for r in kafka.drain(topic, isolation="read_uncommitted")]
    assert b"aborted" in uncommitted


def test_a_second_producer_with_the_same_id_fences_the_first(kafka: Kafka) -> None:
    topic = kafka.create_topic()
    tid = kafka.unique("fence")
    zombie = Producer(kafka.config(**{"transactional.id": tid}))
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie")
    zombie.flush(10)
    with kafka.transactional_producer(tid) as successor:
        with pytest.raises(KafkaException):
            zombie.produce(topic, value=b"zombie-2")
            zombie.commit_transaction(15)
        successor.begin_transaction()
        successor.produce(topic, value=b"successor")
        successor.commit_transaction(30)
    assert [r.value for r in kafka.drain(topic)] == [b"successor"]


def test_compacted_topic_is_created_with_its_config(kafka: Kafka) -> None:
    topic = kafka.create_topic(partitions=2, config={"cleanup.policy": "compact",
                                                     "min.compaction.lag.ms": "0"})
    cfg = kafka.topic_config(topic)
    assert cfg["cleanup.policy"] == "compact"
    assert cfg["min.compaction.lag.ms"] == "0"
    assert kafka.partitions(topic) == 2


def test_read_committed_drain_stops_at_the_last_stable_offset(kafka: Kafka) -> None:
    topic = kafka.create_topic()
    with kafka.transactional_producer() as open_txn:
        open_txn.begin_transaction()
        open_txn.produce(topic, value=b"undecided")
        open_txn.flush(10)
        # read_committed ends at the LSO (0 here), read_uncommitted must wait for the record.
        assert kafka.drain(topic) == []
        assert [r.value for r in kafka.drain(topic, isolation="read_uncommitted")] == [b"undecided"]
        open_txn.abort_transaction(30)
