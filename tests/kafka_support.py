"""Helpers for tests against a real Kafka broker: where the broker comes from, topics, transactional
producers and read_committed drains. Every wait is bounded by a deadline."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

REPO = Path(__file__).resolve().parent.parent
BROKER_SH = REPO / "deploy" / "kafka" / "broker.sh"


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def _to_record(m: Message) -> Record:
    return Record(topic=m.topic(), partition=m.partition(), offset=m.offset(), key=m.key(),
                  value=m.value(), headers=tuple(m.headers() or ()))


@dataclass(slots=True, kw_only=True)
class Kafka:
    """A reachable broker plus the small toolkit the tests use on it."""

    bootstrap: str
    origin: str
    _admin: AdminClient | None = field(default=None, repr=False)

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            # a metadata lookup of a missing topic must not create it (admin clients ask for that by default)
            self._admin = AdminClient(self.config(**{"allow.auto.create.topics": False}))
        return self._admin

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4", **extra}

    def unique(self, prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def create_topic(self, name: str | None = None, partitions: int = 1,
                     config: Mapping[str, str] | None = None) -> str:
        name = name or self.unique()
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))],
            operation_timeout=15, request_timeout=20)
        futures[name].result(timeout=30)
        wait_until(lambda: self._has_leaders(name, partitions), 30, f"leaders for {name}")
        return name

    def _has_leaders(self, name: str, partitions: int) -> bool:
        md = self.admin.list_topics(name, timeout=10).topics.get(name)
        if md is None or md.error is not None or len(md.partitions) != partitions:
            return False
        return all(p.leader >= 0 for p in md.partitions.values())

    def topic_config(self, name: str) -> dict[str, str]:
        res = ConfigResource(ResourceType.TOPIC, name)
        entries = self.admin.describe_configs([res], request_timeout=15)[res].result(timeout=20)
        return {k: v.value for k, v in entries.items()}

    def partitions(self, name: str) -> int:
        return len(self.admin.list_topics(name, timeout=10).topics[name].partitions)

    @contextmanager
    def transactional_producer(self, transactional_id: str | None = None,
                               **extra: Any) -> Iterator[Producer]:
        p = Producer(self.config(**{"transactional.id": transactional_id or self.unique("txn"),
                                    "partitioner": "murmur2_random", **extra}))
        p.init_transactions(30)
        try:
            yield p
        finally:
            p.flush(10)

    def produce(self, topic: str, records: list[tuple[bytes | None, bytes | None]],
                partition: int | None = None) -> None:
        """Plain (non-transactional, idempotent) produce of (key, value) pairs; checks every delivery."""
        p = Producer(self.config(**{"enable.idempotence": True, "partitioner": "murmur2_random"}))
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for key, value in records:
            kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": on_delivery}
            if partition is not None:
                kwargs["partition"] = partition
            p.produce(topic, **kwargs)
            p.poll(0)
        left = p.flush(30)
        if left or errors:
            raise AssertionError(f"produce to {topic}: {left} undelivered, errors {errors[:3]}")

    def end_offsets(self, topic: str, partitions: int) -> list[int]:
        """The high watermark of each of the first `partitions` partitions of `topic`."""
        c = Consumer(self.config(**{"group.id": self.unique("ends")}))
        try:
            return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                    for p in range(partitions)]
        finally:
            c.close()

    def drain(self, topic: str, *, isolation: str = "read_committed",
              timeout: float = 30.0) -> list[Record]:
        """Read every partition of `topic` from the beginning up to its end as seen by `isolation`
        (the last stable offset for read_committed), failing if the end is not reached in time."""
        c = Consumer(self.config(**{"group.id": self.unique("drain"), "enable.auto.commit": False,
                                    "isolation.level": isolation, "auto.offset.reset": "earliest"}))
        try:
            n = self.partitions(topic)
            ends: dict[int, int] = {}
            for p in range(n):
                _low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                     cached=False)
                ends[p] = high
            c.assign([TopicPartition(topic, p, 0) for p in range(n)])
            out: list[Record] = []
            deadline = time.monotonic() + timeout

            def done() -> bool:
                pos = c.position([TopicPartition(topic, p) for p in range(n)])
                return all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in pos)

            while not done():
                if time.monotonic() > deadline:
                    pos = {tp.partition: tp.offset for tp in
                           c.position([TopicPartition(topic, p) for p in range(n)])}
                    raise AssertionError(f"drain {topic}: positions {pos} short of ends {ends} "
                                         f"after {timeout}s ({len(out)} records read)")
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error():
                    raise KafkaException(m.error())
                out.append(_to_record(m))
            return out
        finally:
            c.close()


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `cond()` until it is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def broker() -> Iterator[Kafka]:
    """The broker for a test session: KAFKA_BOOTSTRAP_SERVERS if set, else a testcontainers Kafka if a
    Docker engine answers, else the project's local broker (started here, stopped after if we started it)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield _warm(Kafka(bootstrap=external, origin="KAFKA_BOOTSTRAP_SERVERS"))
        return
    if os.environ.get("PROCESSOR_TEST_DOCKER", "auto") != "never" and _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kc:
            yield _warm(Kafka(bootstrap=kc.get_bootstrap_server(), origin="testcontainers"))
        return
    running = subprocess.run([str(BROKER_SH), "status"], capture_output=True).returncode == 0
    out = subprocess.run([str(BROKER_SH), "start"], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"local broker failed to start:\n{out.stderr}")
    try:
        yield _warm(Kafka(bootstrap=out.stdout.strip().splitlines()[-1], origin="deploy/kafka/broker.sh"))
    finally:
        if not running:
            subprocess.run([str(BROKER_SH), "stop"], capture_output=True, timeout=120)


def _warm(k: Kafka) -> Kafka:
    """Create __transaction_state and __consumer_offsets once, so the first test is not the slow one."""
    k.admin.list_topics(timeout=30)
    p = Producer(k.config(**{"transactional.id": k.unique("warmup")}))
    p.init_transactions(60)
    c = Consumer(k.config(**{"group.id": k.unique("warmup"), "enable.auto.commit": False}))
    try:
        c.commit(offsets=[TopicPartition(k.create_topic(k.unique("warmup")), 0, 0)],
                 asynchronous=False)
    finally:
        c.close()
    return k
