"""Baseline: the physical limit of exactly-once processing on this broker with this client.

A plain confluent-kafka transactional consume→produce copy (EOS v2: one consumer in a group, one
transactional producer, `send_offsets_to_transaction(..., consumer_group_metadata())`), with no engine
in between. Engine benchmarks name these rows as their baselines (`EVENTS_PER_S`, `LATENCY_P50`, ...).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from benchmarks._engine import CounterRun, records_written
from benchmarks.harness import BenchContext, Row, benchmark, mean, percentile

PARTITIONS = 4
KEYS = 100
EVENTS_PER_S = "raw_txn_copy/events_per_s@100ms"
EVENTS_PER_S_B2B = "raw_txn_copy/events_per_s@b2b"  # the engine's cadence: commit as soon as the last one did
LATENCY_P50 = "raw_txn_copy/latency_p50_ms"
LATENCY_P99 = "raw_txn_copy/latency_p99_ms"
IDLE_GAP_S = 0.05  # pause between single-record iterations so each one meets an idle pipeline


@dataclass(frozen=True, slots=True)
class Cadence:
    tag: str
    max_records: int | None  # commit once this many records are in the transaction
    max_interval_s: float  # ... or this long after the previous commit finished (0: back to back,
    # i.e. commit whatever was consumed as soon as the previous commit finished, like the engine)
    repeats: int = 1  # runs of N events; the median one is reported


CADENCES = (Cadence("100ms", None, 0.1, repeats=3), Cadence("b2b", None, 0.0, repeats=3),
            Cadence("1000rec", 1000, 0.1), Cadence("100rec", 100, 0.1))
B2B_CHUNK = 50_000  # back to back: take at most this many already-fetched records per transaction


class TxnLog:
    """A duck-typed `logger` for librdkafka (debug=eos) that only counts CONCURRENT_TRANSACTIONS
    answers: the coordinator still finishing the previous transaction when the next one starts."""

    def __init__(self) -> None:
        self.concurrent = 0

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if args and "concurrent operation" in str(args[-1]):
            self.concurrent += 1
        if level >= 30:  # librdkafka warnings and errors still reach the terminal
            print("librdkafka:", fmt % args, file=sys.stderr, flush=True)


def _consumer(ctx: BenchContext, tag: str, **extra: Any) -> Consumer:
    return Consumer(ctx.config(**{
        "group.id": ctx.unique(f"group-{tag}"), "isolation.level": "read_committed",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range", **extra}))


def _txn_producer(ctx: BenchContext, tag: str, log: TxnLog, **extra: Any) -> Producer:
    p = Producer(ctx.config(**{
        "transactional.id": ctx.unique(f"txn-{tag}"), "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 500_000, "debug": "eos", "logger": log, **extra}))
    p.init_transactions(30)
    return p


def _subscribe(ctx: BenchContext, c: Consumer, topic: str) -> list[Message]:
    """Subscribe and wait for the assignment; returns records fetched meanwhile."""
    assigned: list[TopicPartition] = []
    early: list[Message] = []
    c.subscribe([topic], on_assign=lambda _c, ps: assigned.extend(ps))
    ctx.wait_until(lambda: assigned, 60, f"assignment of {topic}",
                   poll=lambda t: early.extend(c.consume(1000, t)))
    return early


@dataclass(slots=True)
class CopyRun:
    seconds: float = 0.0
    flush: list[float] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)
    txn_open: list[float] = field(default_factory=list)
    first_ack: list[float] = field(default_factory=list)
    concurrent: int = 0


def _copy(ctx: BenchContext, src: str, dst: str, n: int, cad: Cadence) -> CopyRun:
    run = CopyRun()
    log = TxnLog()
    consumer = _consumer(ctx, cad.tag)
    producer = _txn_producer(ctx, cad.tag, log)

    def on_first(err: Any, msg: Message) -> None:
        if err is None:
            run.first_ack.append(msg.latency() or 0.0)

    try:
        buffered = _subscribe(ctx, consumer, src)
        b2b = cad.max_interval_s == 0
        chunk = (B2B_CHUNK if b2b else 1000) if cad.max_records is None else cad.max_records
        copied = pending = 0
        in_txn = False
        t_begin = 0.0
        offsets: dict[int | None, int | None] = {}  # partition -> last offset consumed
        start = cycle = time.monotonic()
        while copied < n:
            ctx.check()
            want = chunk if cad.max_records is None else cad.max_records - pending
            if buffered:
                msgs, buffered = buffered, []
            elif b2b:  # whatever is already fetched; if nothing is, wait for the first record only
                msgs = consumer.consume(want, 0)
                if not msgs and not in_txn:
                    first = consumer.poll(0.1)
                    msgs = [] if first is None else [first, *consumer.consume(want - 1, 0)]
            else:
                msgs = consumer.consume(want, max(0.0, cycle + cad.max_interval_s - time.monotonic()))
            for m in msgs:
                if m.error():
                    raise KafkaException(m.error())
                if not in_txn:
                    producer.begin_transaction()
                    t_begin, in_txn = time.monotonic(), True
                    producer.produce(dst, m.value(), m.key(), on_delivery=on_first)
                else:
                    try:
                        producer.produce(dst, m.value(), m.key())
                    except BufferError:
                        producer.flush(30)
                        producer.produce(dst, m.value(), m.key())
                offsets[m.partition()] = m.offset()
            pending += len(msgs)
            now = time.monotonic()
            full = cad.max_records is not None and pending >= cad.max_records
            if full or now - cycle >= cad.max_interval_s or copied + pending >= n:
                if in_txn:  # a cycle that consumed nothing has no transaction and sends no offsets
                    t0 = time.monotonic()
                    if producer.flush(30):
                        raise RuntimeError("flush left records undelivered")
                    t1 = time.monotonic()
                    producer.send_offsets_to_transaction(
                        [TopicPartition(src, p or 0, (o or 0) + 1) for p, o in offsets.items()],
                        consumer.consumer_group_metadata(), 30)
                    t2 = time.monotonic()
                    producer.commit_transaction(30)
                    t3 = time.monotonic()
                    run.flush.append(t1 - t0)
                    run.offsets.append(t2 - t1)
                    run.commit.append(t3 - t2)
                    run.txn_open.append(t3 - t_begin)
                    copied, pending, in_txn = copied + pending, 0, False
                    offsets.clear()
                cycle = time.monotonic()
        run.seconds = time.monotonic() - start
        run.concurrent = log.concurrent
        return run
    finally:
        consumer.close()


def _verify(ctx: BenchContext, dst: str, n: int) -> None:
    seqs = sorted(orjson.loads(v)["seq"] for _p, _k, v in ctx.drain(dst, timeout=120) if v is not None)
    if seqs != list(range(n)):
        dup = len(seqs) - len(set(seqs))
        raise AssertionError(f"{dst}: {len(seqs)} read_committed records ({dup} duplicates), "
                             f"expected seq 0..{n - 1} once each")


def _ms(v: float) -> float:
    return v * 1000.0


def _throughput_rows(ctx: BenchContext, cad: Cadence, n: int, runs: list[CopyRun]) -> list[Row]:
    runs = sorted(runs, key=lambda r: r.seconds)
    run = runs[len(runs) // 2]
    t, txns = cad.tag, len(run.commit)
    median = "" if len(runs) == 1 else (
        f"; median of {len(runs)} runs: " + " / ".join(f"{n / r.seconds:,.0f}" for r in runs))
    totals = [a + b + c for a, b, c in zip(run.flush, run.offsets, run.commit, strict=True)]
    base = None if t == "100ms" else EVENTS_PER_S

    def split(xs: list[float]) -> str:
        return f"p50 {_ms(percentile(xs, 50)):.1f}, p99 {_ms(percentile(xs, 99)):.1f} ms"

    return [
        ctx.row(f"events_per_s@{t}", n / run.seconds, "events/s", baseline=base,
                notes=f"{n} events in {run.seconds:.1f} s, verified exactly once (read_committed){median}"),
        ctx.row(f"commits_per_s@{t}", txns / run.seconds, "txn/s",
                notes=f"{txns} txns, {n / max(txns, 1):.0f} events/txn, "
                      f"txn open {_ms(mean(run.txn_open)):.1f} ms avg"),
        ctx.row(f"commit_ms@{t}", _ms(mean(totals)), "ms",
                notes=f"flush+send_offsets+commit_transaction; {split(totals)}"),
        ctx.row(f"flush_ms@{t}", _ms(mean(run.flush)), "ms", notes=split(run.flush)),
        ctx.row(f"send_offsets_ms@{t}", _ms(mean(run.offsets)), "ms", notes=split(run.offsets)),
        ctx.row(f"commit_txn_ms@{t}", _ms(mean(run.commit)), "ms", notes=split(run.commit)),
        ctx.row(f"first_ack_ms@{t}", _ms(mean(run.first_ack)), "ms",
                notes=f"produce→ack of each txn's first record, right after the previous commit; "
                      f"{split(run.first_ack)}; {run.concurrent} CONCURRENT_TRANSACTIONS retries "
                      f"in {txns} txns (x 20 ms backoff = {run.concurrent * 0.02:.1f} s of {run.seconds:.1f} s)"),
    ]


def _single_record(ctx: BenchContext, iters: int, gap_s: float) -> tuple[list[list[float]], int]:
    """Copy one record at a time, each in its own transaction; per iteration the stage times
    [produce→consumed, begin→flushed, send_offsets, commit, commit→visible, total] in seconds."""
    src, dst = ctx.create_topic("lat-in", PARTITIONS), ctx.create_topic("lat-out", PARTITIONS)
    feeder = Producer(ctx.config(**{"enable.idempotence": True, "linger.ms": 0,
                                    "partitioner": "murmur2_random"}))
    log = TxnLog()
    producer = _txn_producer(ctx, "lat", log, **{"linger.ms": 0})
    consumer = _consumer(ctx, "lat")
    reader = Consumer(ctx.config(**{"group.id": ctx.unique("reader"), "isolation.level": "read_committed",
                                    "enable.auto.commit": False}))
    reader.assign([TopicPartition(dst, p, 0) for p in range(PARTITIONS)])
    out: list[list[float]] = []

    def poll_one(c: Consumer, what: str) -> Message:
        got: list[Message] = []

        def take(t: float) -> None:
            m = c.poll(t)
            if m is not None:
                if m.error():
                    raise KafkaException(m.error())
                got.append(m)

        ctx.wait_until(lambda: got, 30, what, poll=take, interval=0.1)
        return got[0]

    try:
        if _subscribe(ctx, consumer, src):
            raise AssertionError(f"{src} should be empty")
        warmup = 5
        concurrent0 = 0
        for i in range(warmup + iters):
            ctx.check()
            if i == warmup:
                concurrent0 = log.concurrent
            value = orjson.dumps({"seq": i, "key": f"k{i % KEYS:03d}"})
            t0 = time.monotonic()
            feeder.produce(src, value, f"k{i % KEYS:03d}".encode())
            feeder.poll(0)
            m = poll_one(consumer, f"record {i} on {src}")
            t1 = time.monotonic()
            producer.begin_transaction()
            producer.produce(dst, m.value(), m.key())
            if producer.flush(30):
                raise RuntimeError("flush left records undelivered")
            t2 = time.monotonic()
            done = TopicPartition(src, m.partition() or 0, (m.offset() or 0) + 1)
            producer.send_offsets_to_transaction([done], consumer.consumer_group_metadata(), 30)
            t3 = time.monotonic()
            producer.commit_transaction(30)
            t4 = time.monotonic()
            seen = poll_one(reader, f"record {i} visible on {dst}")
            t5 = time.monotonic()
            if seen.value() != value:
                raise AssertionError(f"expected {value!r} on {dst}, read {seen.value()!r}")
            if i >= warmup:
                out.append([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0])
            if gap_s:
                time.sleep(gap_s)  # deliberate idle time, not a wait for anything
        feeder.flush(10)
        return out, log.concurrent - concurrent0
    finally:
        consumer.close()
        reader.close()


def _latency_rows(ctx: BenchContext, suffix: str, gap_s: float, samples: list[list[float]],
                  concurrent: int) -> list[Row]:
    stages = ["produce→consumed", "begin→flushed", "send_offsets", "commit", "commit→visible"]
    p50s = ", ".join(f"{s} {_ms(percentile([x[i] for x in samples], 50)):.1f}" for i, s in enumerate(stages))
    total = [x[-1] for x in samples]
    how = (f"{len(samples)} records one at a time, {_ms(gap_s):.0f} ms idle between" if gap_s
           else f"{len(samples)} records back to back")
    return [
        ctx.row(f"latency_p50_ms{suffix}", _ms(percentile(total, 50)), "ms",
                baseline=None if not suffix else LATENCY_P50,
                notes=f"produce→visible to read_committed; {how}; p50 stages ms: {p50s}"),
        ctx.row(f"latency_p99_ms{suffix}", _ms(percentile(total, 99)), "ms",
                baseline=None if not suffix else LATENCY_P99,
                notes=f"{concurrent} CONCURRENT_TRANSACTIONS retries in {len(samples)} txns"),
    ]


def _after_commit(ctx: BenchContext, delays_s: tuple[float, ...], iters: int) -> list[Row]:
    """How long the coordinator stays busy after commit_transaction() returns: back-to-back one-record
    transactions whose first produce waits `delay` after the previous commit. An AddPartitionsToTxn that
    arrives while the coordinator still writes the previous transaction's markers is answered
    CONCURRENT_TRANSACTIONS, and librdkafka retries it after a fixed 20 ms."""
    dst = ctx.create_topic("window", PARTITIONS)
    log = TxnLog()
    producer = _txn_producer(ctx, "window", log, **{"linger.ms": 0})

    def burst(delay: float, count: int) -> tuple[int, list[float]]:
        before, flushed = log.concurrent, []
        for i in range(count):
            ctx.check()
            time.sleep(delay)  # the delay under test, not a wait for anything
            t0 = time.monotonic()
            producer.begin_transaction()
            producer.produce(dst, b"x", f"k{i % KEYS:03d}".encode())
            if producer.flush(30):
                raise RuntimeError("flush left records undelivered")
            flushed.append(time.monotonic() - t0)
            producer.commit_transaction(30)
        return log.concurrent - before, flushed

    burst(0.0, 5)  # warm-up
    rows = []
    for delay in delays_s:
        retried, flushed = burst(delay, iters)
        rows.append(ctx.row(f"retry_pct@{_ms(delay):.0f}ms_after_commit", 100 * retried / iters, "%",
                            notes=f"{retried}/{iters} one-record txns hit CONCURRENT_TRANSACTIONS; "
                                  f"begin→flushed p50 {_ms(percentile(flushed, 50)):.1f}, "
                                  f"mean {_ms(mean(flushed)):.1f} ms"))
    return rows


def run_raw(ctx: BenchContext, src: str, n: int, *, tag: str) -> CounterRun:
    """The ceiling beside the counters (`counter_peers`): copy `src` (n events) back to back, in this
    process, into a new output topic; verify it and measure the counters' three numbers. CPU is this
    process's (the copy is all it does meanwhile; librdkafka's threads included)."""
    dst = ctx.create_topic(f"out-{tag}", PARTITIONS)
    cpu0 = time.process_time()
    run = _copy(ctx, src, dst, n, Cadence("b2b", None, 0.0))
    cpu_s = time.process_time() - cpu0
    _verify(ctx, dst, n)
    records, _markers, records_note = records_written(ctx, {"output": dst})
    txns = len(run.commit)
    ctx.log(f"  {tag}: {n / run.seconds:,.0f} events/s, {cpu_s / n * 1e6:.1f} CPU ms/1k, {txns} txns, verified")
    return CounterRun(
        events_per_s=n / run.seconds, cpu_ms_per_1k=cpu_s / n * 1e6, records_per_event=records / n,
        seconds=run.seconds,
        notes=f"{n} events copied back to back (no state: the ceiling) in {run.seconds:.1f} s, {txns} transactions; "
              f"clock: assignment → last commit; verified every input seq exactly once (read_committed)",
        cpu_notes=f"the benchmark process's CPU over the copy (subscribe → last commit): {cpu_s:.2f} s",
        records_notes=records_note, commit_rate=txns / run.seconds,
        commit_notes=f"{txns} transactions, {n / max(txns, 1):,.0f} events each")


@benchmark("raw_txn_copy", timeout_s=900)
def raw_txn_copy(ctx: BenchContext) -> list[Row]:
    n = ctx.pick(200_000, 20_000)
    src = ctx.create_topic("in", PARTITIONS)
    rate = ctx.produce_events(src, n, keys=KEYS, value_bytes=100)
    rows = [ctx.row("preproduce_events_per_s", rate, "events/s",
                    notes=f"{n} JSON events ~100 B, {KEYS} keys, {PARTITIONS} partitions, "
                          "idempotent producer")]
    for cad in CADENCES:
        runs = []
        for _ in range(cad.repeats):
            dst = ctx.create_topic(f"out-{cad.tag}", PARTITIONS)
            ctx.log(f"copy {n} events, commit every {cad.max_records or '∞'} records / {cad.max_interval_s}s")
            runs.append(_copy(ctx, src, dst, n, cad))
            _verify(ctx, dst, n)
            ctx.log(f"  {n / runs[-1].seconds:,.0f} events/s, {len(runs[-1].commit)} txns, verified")
        rows += _throughput_rows(ctx, cad, n, runs)
    iters = ctx.pick(200, 50)
    for suffix, gap in (("", IDLE_GAP_S), ("_b2b", 0.0)):
        ctx.log(f"single-record latency x{iters}, gap {gap}s")
        samples, concurrent = _single_record(ctx, iters, gap)
        rows += _latency_rows(ctx, suffix, gap, samples, concurrent)
    ctx.log("coordinator busy window after commit")
    rows += _after_commit(ctx, (0.0, 0.002, 0.005, 0.010), ctx.pick(60, 20))
    return rows
