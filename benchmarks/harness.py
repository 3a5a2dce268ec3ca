"""What a benchmark module sees: the `@benchmark` decorator, `BenchContext` and `Row`.

A benchmark is a function in a module of this package:

    from benchmarks.harness import BenchContext, Row, benchmark

    @benchmark("engine_counter", needs=("raw_txn_copy",))
    def engine_counter(ctx: BenchContext) -> list[Row]:
        topic = ctx.create_topic("in", partitions=4)
        ctx.produce_events(topic, ctx.pick(200_000, 20_000))
        ...
        return [ctx.row("events_per_s", eps, "events/s", baseline="raw_txn_copy/events_per_s@100ms")]

`benchmarks.run` imports every module of the package (except `run`, `harness` and `_private` ones) and
runs each registered function in its own process, killed if it outlives its deadline.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

# ---------------------------------------------------------------------------------------------- rows

# "ok": measured in this run; "failed" / "skipped": no value (nan), the notes say why; "quoted": a figure
# measured elsewhere and copied in (a peer that cannot run here), the notes say where it comes from
Status = Literal["ok", "failed", "skipped", "quoted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One measured number. `baseline` names another row as "bench/metric" (or just "metric" of the same
    benchmark); the table then shows value / baseline value, measured in the same run."""

    bench: str
    metric: str
    value: float
    unit: str
    baseline: str | None = None
    notes: str = ""
    status: Status = "ok"

    @property
    def measured(self) -> bool:
        """A value measured in this run (not failed, skipped or quoted)."""
        return self.status == "ok" and not math.isnan(self.value)

    @property
    def key(self) -> str:
        return f"{self.bench}/{self.metric}"

    @property
    def baseline_key(self) -> str | None:
        if self.baseline is None:
            return None
        return self.baseline if "/" in self.baseline else f"{self.bench}/{self.baseline}"


# ---------------------------------------------------------------------------------------------- registry


BenchFn = Callable[["BenchContext"], "list[Row] | None"]


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    fn: BenchFn
    module: str
    timeout_s: float
    needs: tuple[str, ...]


REGISTRY: dict[str, Benchmark] = {}


def benchmark(name: str, *, timeout_s: float = 600.0,
              needs: Sequence[str] = ()) -> Callable[[BenchFn], BenchFn]:
    """Register `fn` as benchmark `name`. `timeout_s`: hard deadline (the process is killed after it);
    `needs`: benchmarks whose rows this one names as baselines (`--only` runs them too)."""

    def register(fn: BenchFn) -> BenchFn:
        if name in REGISTRY and REGISTRY[name].fn is not fn:
            raise ValueError(f"benchmark {name!r} registered twice: {REGISTRY[name].module}, {fn.__module__}")
        REGISTRY[name] = Benchmark(name, fn, fn.__module__, timeout_s, tuple(needs))
        return fn

    return register


class BenchTimeout(Exception):
    """A benchmark passed its deadline (raised by BenchContext.check / wait_until)."""


# ---------------------------------------------------------------------------------------------- context


@dataclass(slots=True, kw_only=True)
class BenchContext:
    """Everything a benchmark gets: where the broker is, a deadline, scratch space, topic and event
    helpers, and the results sink (`row`)."""

    name: str
    bootstrap: str
    quick: bool
    deadline: float  # time.monotonic() value; the harness kills the process a little after it
    scratch: Path  # an empty directory of this benchmark's own, removed afterwards
    sink: Callable[[Row], None] = field(repr=False)
    topics: list[str] = field(default_factory=list, repr=False)
    _admin: AdminClient | None = field(default=None, repr=False)
    _t0: float = field(default_factory=time.monotonic, repr=False)

    # -- results ---------------------------------------------------------------------------------------

    def row(self, metric: str, value: float, unit: str, *, baseline: str | None = None,
            notes: str = "", status: Status = "ok") -> Row:
        """Record a result now (it survives a later failure of the benchmark) and return it."""
        r = Row(bench=self.name, metric=metric, value=float(value), unit=unit, baseline=baseline,
                notes=notes, status=status)
        self.sink(r)
        return r

    def missing(self, metric: str, unit: str, why: str, *, status: Status = "failed") -> Row:
        """Record that `metric` has no value in this run (a part failed or was skipped) and why; the
        table shows it as FAILED / SKIPPED while the benchmark's other rows still print."""
        return self.row(metric, math.nan, unit, notes=why, status=status)

    def pick(self, full: int, quick: int) -> int:
        """`quick` under --quick, else `full`."""
        return quick if self.quick else full

    def log(self, msg: str) -> None:
        print(f"[{self.name} +{time.monotonic() - self._t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # -- deadlines -------------------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise BenchTimeout if the benchmark's deadline has passed: call it in every loop."""
        if time.monotonic() > self.deadline:
            raise BenchTimeout(f"{self.name}: deadline passed")

    def wait_until(self, cond: Callable[[], object], timeout: float, what: str,
                   poll: Callable[[float], object] | None = None, interval: float = 0.05) -> None:
        """Call `cond()` until truthy; between calls run `poll(interval)` (e.g. a client's poll) or sleep.
        Fails after `timeout` seconds or at the benchmark's deadline, whichever is first."""
        end = min(time.monotonic() + timeout, self.deadline)
        while not cond():
            if time.monotonic() > end:
                why = "the benchmark's deadline passed" if end == self.deadline else f"timed out after {timeout}s"
                raise BenchTimeout(f"{self.name}: {why} waiting for {what}")
            if poll is not None:
                poll(interval)
            else:
                time.sleep(interval)

    # -- clients and topics ----------------------------------------------------------------------------

    def config(self, **extra: Any) -> dict[str, Any]:
        """Client config for the broker; pass dotted keys as `**{"linger.ms": 5}`."""
        return {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4", **extra}

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self.config())
        return self._admin

    def unique(self, prefix: str) -> str:
        return f"bench-{self.name}-{prefix}-{uuid.uuid4().hex[:8]}"

    def create_topic(self, prefix: str = "t", partitions: int = 1,
                     config: dict[str, str] | None = None) -> str:
        """Create a uniquely named topic (deleted when the benchmark ends) and wait for its leaders."""
        name = self.unique(prefix)
        fut = self.admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                                 config=dict(config or {}))],
                                       operation_timeout=15, request_timeout=20)
        fut[name].result(timeout=30)
        self.topics.append(name)

        def ready() -> bool:
            md = self.admin.list_topics(name, timeout=10).topics.get(name)
            return (md is not None and md.error is None and len(md.partitions) == partitions
                    and all(p.leader >= 0 for p in md.partitions.values()))

        self.wait_until(ready, 30, f"leaders of {name}")
        return name

    def delete_topics(self) -> None:
        if not self.topics:
            return
        futs = self.admin.delete_topics(self.topics, operation_timeout=15, request_timeout=20)
        for f in futs.values():
            try:
                f.result(timeout=30)
            except Exception as e:  # cleanup only: report, do not mask the benchmark's own outcome
                self.log(f"delete topic: {e}")
        self.topics.clear()

    def produce_events(self, topic: str, n: int, *, keys: int = 100, value_bytes: int = 100) -> float:
        """Produce `n` JSON events {"seq", "key", "pad"} of about `value_bytes` bytes, keyed over `keys`
        distinct keys ("k000".."k099"), with a fast idempotent murmur2_random producer. Every delivery is
        checked. Returns the produce rate in events/s."""
        p = Producer(self.config(**{"enable.idempotence": True, "partitioner": "murmur2_random",
                                    "linger.ms": 20, "batch.num.messages": 10000,
                                    "queue.buffering.max.messages": 500_000}))
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        key_bytes = [f"k{i:03d}".encode() for i in range(keys)]
        pad = "x" * max(0, value_bytes - len(orjson.dumps({"seq": n, "key": "k000", "pad": ""})))
        t0 = time.monotonic()
        for i in range(n):
            k = key_bytes[i % keys]
            v = orjson.dumps({"seq": i, "key": k.decode(), "pad": pad})
            while True:
                try:
                    p.produce(topic, v, k, on_delivery=on_delivery)
                    break
                except BufferError:
                    self.check()
                    p.poll(0.01)
            if i % 1000 == 0:
                p.poll(0)
                self.check()
        left = p.flush(max(1.0, min(60.0, self.remaining())))
        rate = n / (time.monotonic() - t0)
        if left or errors:
            raise RuntimeError(f"produce to {topic}: {left} undelivered, errors {errors[:3]}")
        return rate

    def drain(self, topic: str, *, isolation: str = "read_committed",
              timeout: float = 60.0) -> list[tuple[int, bytes | None, bytes | None]]:
        """Every record of `topic` as (partition, key, value), read from the beginning to the end as seen
        by `isolation` (the last stable offset for read_committed); fails if the end is not reached."""
        c = Consumer(self.config(**{"group.id": self.unique("drain"), "enable.auto.commit": False,
                                    "isolation.level": isolation, "auto.offset.reset": "earliest"}))
        try:
            parts = list(self.admin.list_topics(topic, timeout=10).topics[topic].partitions)
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                    for p in parts}
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            out: list[tuple[int, bytes | None, bytes | None]] = []

            def done() -> bool:
                pos = c.position([TopicPartition(topic, p) for p in parts])
                return all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in pos)

            def take(t: float) -> None:
                for m in c.consume(10_000, t):
                    if m.error():
                        raise KafkaException(m.error())
                    out.append((m.partition() or 0, m.key(), m.value()))

            self.wait_until(done, timeout, f"{topic} read to its end ({isolation})", poll=take, interval=0.2)
            return out
        finally:
            c.close()


# ---------------------------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def mean(values: Iterable[float]) -> float:
    v = list(values)
    return sum(v) / len(v) if v else math.nan


# ---------------------------------------------------------------------------------------------- child side


def child_main(spec: dict[str, Any], conn: Connection) -> None:
    """Entry point of a benchmark's own process (multiprocessing, spawn): run it, stream rows back.
    Messages: ("row", Row), then ("done", None) or ("error", traceback text)."""
    import importlib

    importlib.import_module(spec["module"])
    bench = REGISTRY[spec["name"]]
    sent: set[str] = set()

    def sink(r: Row) -> None:
        sent.add(r.key)
        conn.send(("row", r))

    ctx = BenchContext(name=bench.name, bootstrap=spec["bootstrap"], quick=spec["quick"],
                       deadline=spec["deadline"], scratch=Path(spec["scratch"]), sink=sink)
    try:
        for r in bench.fn(ctx) or []:
            if r.key not in sent:
                sink(r)
        conn.send(("done", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        try:
            ctx.delete_topics()
        finally:
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # never hang in client destructors at interpreter exit
