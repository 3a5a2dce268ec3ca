"""What the chaos run feeds in and watches come out: a paced, seeded workload on two producers (one
with Kafka's murmur2 partitioner, one with librdkafka's default ``consistent_random``), and an
observer that reads the output topic with ``read_committed`` and notes when each record arrived."""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from processor._engine.routing import partition_for_key


@dataclass(frozen=True, slots=True, kw_only=True)
class Topics:
    counts: str
    sleeps: str
    asks: str
    output: str
    partitions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Rates:
    """Records per second of each kind, and the share of counter records the foreign producer sends."""

    counts: float
    sleeps: float
    asks: float
    foreign_share: float


def spread_keys(prefix: str, n: int, partitions: int) -> list[str]:
    """`n` keys `<prefix>-<i>` dealt round-robin over the partitions (by murmur2), so every partition
    has keys and therefore outputs to time failovers by."""
    buckets: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while sum(len(b) for b in buckets.values()) < n and i < 100 * n:
        key = f"{prefix}-{i}"
        part = partition_for_key(key.encode(), partitions)
        if len(buckets[part]) < -(-n // partitions):
            buckets[part].append(key)
        i += 1
    return sorted((k for b in buckets.values() for k in b), key=lambda k: int(k.rsplit("-", 1)[1]))


# librdkafka's own log lines of the suite's clients (hundreds of "connection refused" per broker
# outage); the runner sends them to <work>/logs/clients.log instead of the test output.
CLIENT_LOG = logging.getLogger("tests.chaos.clients")
CLIENT_LOG.propagate = False


def _base(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "broker.address.family": "v4", "logger": CLIENT_LOG}


class Workload(threading.Thread):
    """Produces records at the profile's rates until stopped or `cap_seconds` have passed (so it is
    bounded either way). Delivered ids are kept per kind; the verifier recomputes from the topics."""

    TICK = 0.1

    def __init__(self, bootstrap: str, topics: Topics, rates: Rates, seed: int, *, keys: list[str],
                 callees: list[str], cap_seconds: float) -> None:
        super().__init__(name="chaos-workload", daemon=True)
        self.topics, self.rates, self.keys, self.callees = topics, rates, keys, callees
        self.rng = random.Random(seed)
        self.cap_seconds = cap_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.delivered: dict[str, set[str]] = {"count": set(), "sleep": set(), "call": set()}
        self.errors: list[str] = []
        self.sent = 0
        cfg = {**_base(bootstrap), "enable.idempotence": True, "linger.ms": 5}
        self.murmur2 = Producer({**cfg, "partitioner": "murmur2_random", "error_cb": self._on_error})
        # No `partitioner`: librdkafka's default consistent_random (CRC32), what most Python code uses.
        self.foreign = Producer({**cfg, "error_cb": self._on_error})
        self.seq = 0

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            with self.lock:
                self.errors.append(f"fatal producer error: {err.str()}")

    def _delivery(self, kind: str, ev_id: str) -> Any:
        def cb(err: KafkaError | None, _msg: Any) -> None:
            with self.lock:
                if err is None:
                    self.delivered[kind].add(ev_id)
                else:
                    self.errors.append(f"{kind} {ev_id}: {err.str()}")
        return cb

    def _send(self, producer: Producer, topic: str, kind: str, key: str, value: dict[str, Any]) -> None:
        for _ in range(200):  # the local queue is bounded; during an outage it may fill: wait for room
            try:
                producer.produce(topic, key=key.encode(), value=orjson.dumps(value),
                                 on_delivery=self._delivery(kind, value["id"]))
                self.sent += 1
                return
            except BufferError:
                producer.poll(0.05)
        with self.lock:
            self.errors.append(f"{kind} {value['id']}: local queue full for 10s; not produced")

    def run(self) -> None:
        owed = {"count": 0.0, "sleep": 0.0, "call": 0.0}
        rates = {"count": self.rates.counts, "sleep": self.rates.sleeps, "call": self.rates.asks}
        started = time.monotonic()
        while not self.stop_event.is_set() and time.monotonic() - started < self.cap_seconds:
            for kind in owed:
                owed[kind] += rates[kind] * self.TICK
                while owed[kind] >= 1:
                    owed[kind] -= 1
                    self._one(kind)
            self.murmur2.poll(0)
            self.foreign.poll(0)
            self.stop_event.wait(self.TICK)

    def _one(self, kind: str) -> None:
        self.seq += 1
        t = time.time()
        if kind == "count":
            foreign = self.rng.random() < self.rates.foreign_share
            src = "f" if foreign else "m"
            ev = {"id": f"{src}{self.seq}", "src": src, "t": t}
            self._send(self.foreign if foreign else self.murmur2, self.topics.counts, kind,
                       self.rng.choice(self.keys), ev)
        elif kind == "sleep":
            ev_id = f"s{self.seq}"
            self._send(self.murmur2, self.topics.sleeps, kind, ev_id, {"id": ev_id, "t": t})
        else:
            ev_id = f"a{self.seq}"
            here = partition_for_key(ev_id.encode(), self.topics.partitions)
            others = [c for c in self.callees if partition_for_key(c.encode(), self.topics.partitions) != here]
            ev = {"id": ev_id, "x": self.rng.randrange(1, 10_000), "callee": self.rng.choice(others), "t": t}
            self._send(self.murmur2, self.topics.asks, kind, ev_id, ev)

    def close(self) -> None:
        """Purge and destroy both producers: left alive, they would reconnect to whatever broker
        comes up next on the same port and (auto-)create topics there."""
        for p in (self.murmur2, self.foreign):
            p.purge()
            p.flush(0)
        del self.murmur2, self.foreign
        gc.collect()

    def finish(self, timeout: float = 120.0) -> None:
        """Stop producing and wait (bounded) for every delivery report."""
        self.stop_event.set()
        self.join(timeout=10)
        deadline = time.monotonic() + timeout
        for p in (self.murmur2, self.foreign):
            left = p.flush(max(1.0, deadline - time.monotonic()))
            if left:
                with self.lock:
                    self.errors.append(f"{left} records undelivered {timeout}s after the workload stopped")


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    at: float
    partition: int
    offset: int
    value: dict[str, Any]


class OutputObserver(threading.Thread):
    """Reads every partition of the output topic from the start with ``read_committed`` and notes the
    wall-clock time each record became visible. Used for failover times and for "has it settled"."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(name="chaos-observer", daemon=True)
        self.topic, self.partitions = topic, partitions
        self.consumer = Consumer({**_base(bootstrap), "group.id": f"chaos-observer-{time.time_ns()}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed",
                                  "auto.offset.reset": "earliest"})
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.by_partition: dict[int, list[Arrival]] = {p: [] for p in range(partitions)}
        self.ids: dict[str, int] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)])
        try:
            while not self.stop_event.is_set():
                for m in self.consumer.consume(500, 0.2):
                    err = m.error()
                    if err is not None:
                        if err.fatal():
                            with self.lock:
                                self.errors.append(f"observer: fatal consumer error {err.str()}")
                        continue  # transport errors while the broker is away: librdkafka reconnects
                    value = orjson.loads(m.value() or b"{}")
                    a = Arrival(at=time.time(), partition=m.partition() or 0, offset=m.offset() or 0, value=value)
                    with self.lock:
                        self.by_partition[a.partition].append(a)
                        ev_id = str(value.get("id"))
                        self.ids[ev_id] = self.ids.get(ev_id, 0) + 1
        finally:
            self.consumer.close()

    def flowing_since(self, t: float) -> dict[int, float | None]:
        """For every partition, when the first counter output of a murmur2-produced input made after
        wall time `t` arrived (None: not yet)."""
        out: dict[int, float | None] = {}
        with self.lock:
            for p, arrivals in self.by_partition.items():
                out[p] = next((a.at for a in arrivals if a.value.get("kind") == "count"
                               and a.value.get("src") == "m" and a.value.get("t", 0) > t), None)
        return out

    def seen(self, ids: set[str]) -> set[str]:
        """Which of `ids` have at least one output."""
        with self.lock:
            return {i for i in ids if i in self.ids}

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.by_partition.values())

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=15)
