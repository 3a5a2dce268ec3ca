"""Engine benchmark: a service handler with ten sequential durable steps, then one output record.

The processor runs as its own OS process (`python -m processor run benchmarks.apps.ten_steps_app:app`).
(a) Latency at concurrency 1: one event at a time, produce → its output visible to a read_committed
consumer. (b) Throughput with 64 invocations in flight: 64 keys in a closed loop, each key's next event
produced as soon as its previous output is visible.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from confluent_kafka import Producer

from benchmarks._engine import EngineProcess, OutputReader, fmt_warnings
from benchmarks.harness import BenchContext, Row, benchmark, percentile
from benchmarks.raw_txn_copy import LATENCY_P50

PARTITIONS = 4
STEPS = 10
CONCURRENCY = 64
WARMUP = 10
LATENCY_P50_B2B = "raw_txn_copy/latency_p50_ms_b2b"  # one record at a time, back to back: our loop
LATENCY_P99_B2B = "raw_txn_copy/latency_p99_ms_b2b"
REFERENCE = ("issue 8's targets: p50 ≤ 15 ms and p99 ≤ 30 ms at concurrency 1, ≥ 9,000 steps/s at 64 keys; "
             "the peer (Restate) is restate_steps' rows")


class _Driver:
    """Produces events {"seq", "key"} and matches outputs to them by seq."""

    def __init__(self, ctx: BenchContext, src: str, reader: OutputReader, engine: EngineProcess) -> None:
        self.ctx = ctx
        self.src = src
        self.reader = reader
        self.engine = engine
        self.producer = Producer(ctx.config(**{"enable.idempotence": True, "linger.ms": 0,
                                               "partitioner": "murmur2_random"}))
        self.seq = 0
        self.sent: dict[int, float] = {}  # seq -> time.monotonic() at produce
        self.done: dict[int, float] = {}  # seq -> latency s
        self.errors: list[str] = []

    def send(self, key: str) -> int:
        seq = self.seq
        self.seq += 1
        self.sent[seq] = time.monotonic()
        self.producer.produce(self.src, orjson.dumps({"seq": seq, "key": key}), key.encode())
        self.producer.poll(0)
        return seq

    def take(self, timeout: float) -> list[tuple[int, str]]:
        """Outputs visible now, as (seq, key)."""
        self.engine.check_alive()
        now_out = []
        for m in self.reader.take(timeout):
            now = time.monotonic()
            v: Any = orjson.loads(m.value() or b"null")
            seq = v["seq"]
            if seq not in self.sent or seq in self.done or v["total"] != sum(range(STEPS)):
                if len(self.errors) < 5:
                    self.errors.append(f"unexpected output {v}")
                continue
            self.done[seq] = now - self.sent[seq]
            now_out.append((seq, v["key"]))
        return now_out


def _latency(ctx: BenchContext, d: _Driver, iters: int) -> list[float]:
    out = []
    for i in range(WARMUP + iters):
        ctx.check()
        seq = d.send(f"lat{i % 100:02d}")

        def arrived(s: int = seq) -> bool:
            return s in d.done

        ctx.wait_until(arrived, 30, f"output of event {seq}", poll=d.take, interval=0.05)
        if i >= WARMUP:
            out.append(d.done[seq])
    return out


def _throughput(ctx: BenchContext, d: _Driver, rounds: int) -> tuple[float, float, int]:
    """CONCURRENCY keys, each `rounds` invocations one after another. Returns (invocations/s in the
    steady window, window seconds, invocations in the window): from the first round's last completion
    to the completion that leaves the last round only."""
    keys = [f"tp{i:02d}" for i in range(CONCURRENCY)]
    left = {k: rounds for k in keys}
    stamps: list[float] = []
    total = CONCURRENCY * rounds
    for k in keys:
        d.send(k)
        left[k] -= 1

    def poll(t: float) -> None:
        for _seq, key in d.take(t):
            stamps.append(time.monotonic())
            if left[key] > 0:
                left[key] -= 1
                d.send(key)

    ctx.wait_until(lambda: len(stamps) >= total, max(30.0, ctx.remaining() - 30), f"{total} invocations",
                   poll=poll, interval=0.05)
    a, b = CONCURRENCY - 1, total - CONCURRENCY - 1
    window = stamps[b] - stamps[a]
    return (b - a) / window, window, b - a


class _Part:
    """One processor process with its own input and output topics (and so its own commit statistics)."""

    def __init__(self, ctx: BenchContext, tag: str) -> None:
        src = ctx.create_topic(f"in-{tag}", PARTITIONS)
        dst = ctx.create_topic(f"out-{tag}", PARTITIONS)
        self.engine = EngineProcess(ctx, "benchmarks.apps.ten_steps_app:app", ctx.unique(f"app-{tag}"),
                                    {"BENCH_INPUT": src, "BENCH_OUTPUT": dst})
        self.reader = OutputReader(ctx, dst, PARTITIONS)
        self.engine.start()
        self.engine.wait_ready()
        self.driver = _Driver(ctx, src, self.reader, self.engine)

    def finish(self) -> str:
        """Stop the processor; its commit cycles and warnings as notes."""
        self.driver.producer.flush(10)
        self.engine.stop()
        summary = self.engine.commit_summary()
        cycles = f"the engine's commit cycles: {summary[0]}, {summary[1]}; " if summary else ""
        if self.driver.errors:
            raise AssertionError(f"ten_steps: {self.driver.errors}")
        return cycles + fmt_warnings(self.engine.warnings())

    def close(self) -> None:
        self.reader.close()
        self.engine.stop()


@benchmark("ten_steps", timeout_s=600, needs=("raw_txn_copy",))
def ten_steps(ctx: BenchContext) -> list[Row]:
    iters = ctx.pick(200, 30)
    rounds = ctx.pick(40, 10)
    part = _Part(ctx, "lat")
    try:
        ctx.log(f"latency at concurrency 1: {WARMUP} + {iters} invocations")
        lat = _latency(ctx, part.driver, iters)
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        ctx.log(f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        notes = part.finish()
    finally:
        part.close()
    rows = [
        ctx.row("latency_p50_ms@1", p50, "ms", baseline=LATENCY_P50_B2B,
                notes=f"produce → output visible (read_committed), {iters} invocations one at a time back to "
                      f"back after {WARMUP} warm-up; {STEPS} steps = at least {STEPS} commits each, so "
                      f"ratio ÷ {STEPS} ≈ one step vs one raw transaction (idle-pipeline raw p50: "
                      f"{LATENCY_P50}); {notes}"),
        ctx.row("latency_p99_ms@1", p99, "ms", baseline=LATENCY_P99_B2B, notes=REFERENCE),
    ]
    part = _Part(ctx, "tput")
    try:
        ctx.log(f"throughput: {CONCURRENCY} keys x {rounds} invocations, closed loop")
        ips, window, count = _throughput(ctx, part.driver, rounds)
        ctx.log(f"  {ips:,.0f} invocations/s, {ips * STEPS:,.0f} steps/s")
        notes = part.finish()
    finally:
        part.close()
    rows += [
        ctx.row(f"invocations_per_s@{CONCURRENCY}", ips, "inv/s",
                notes=f"{CONCURRENCY} keys in a closed loop (next event of a key when its output is visible), "
                      f"{rounds} each; steady window {count} invocations in {window:.1f} s; {notes}"),
        ctx.row(f"steps_per_s@{CONCURRENCY}", ips * STEPS, "steps/s", notes=REFERENCE),
    ]
    return rows
