"""Engine benchmark: the per-key counter (a virtual object: get, one durable step, set, emit per event).

N events over K keys are produced to a 4-partition input first; then the processor runs as its own OS
process (`python -m processor run benchmarks.apps.counter_app:app`) and the benchmark process counts
its output with a streaming read_committed consumer. One key's events run one after another and each
waits for one commit (its step's result), so a commit carries at most one event per key: K bounds the
parallelism per commit.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from benchmarks._engine import EngineProcess, OutputReader, fmt_warnings, process_cpu_s, records_written
from benchmarks.harness import BenchContext, Row, benchmark
from benchmarks.quix_counter import KEYS as QUIX_KEYS
from benchmarks.raw_txn_copy import EVENTS_PER_S_B2B

PARTITIONS = 4
KEY_COUNTS = (100, 10_000)
QUIX = "quix_counter/{}@100ms"  # the peer's row on the same input (100 keys), commit interval 0.1 s


def _run(ctx: BenchContext, n: int, keys: int) -> list[Row]:
    src = ctx.create_topic(f"in-k{keys}", PARTITIONS)
    dst = ctx.create_topic(f"out-k{keys}", PARTITIONS)
    ctx.log(f"produce {n} events over {keys} keys")
    ctx.produce_events(src, n, keys=keys, value_bytes=100)
    app_name = ctx.unique(f"app-k{keys}")
    engine = EngineProcess(ctx, "benchmarks.apps.counter_app:app", app_name,
                           {"BENCH_INPUT": src, "BENCH_OUTPUT": dst})
    reader = OutputReader(ctx, dst, PARTITIONS)
    last: dict[str, int] = {}
    errors: list[str] = []
    first_ts: list[float] = []

    def take(t: float) -> None:
        engine.check_alive()
        for m in reader.take(t):
            if not first_ts:
                first_ts.append((m.timestamp()[1] or 0) / 1000.0)  # CreateTime: the engine's produce()
            v: Any = orjson.loads(m.value() or b"null")
            k, c = v["key"], v["count"]
            if c != last.get(k, 0) + 1 and len(errors) < 5:
                errors.append(f"key {k}: count {c} after {last.get(k, 0)}")
            last[k] = c

    try:
        engine.start()
        ready = engine.wait_ready()
        cpu_ready = process_cpu_s(engine.proc.pid) if engine.proc else 0.0
        ctx.log(f"processor ready {ready - engine.started_at:.1f}s after spawn; counting {n} outputs")
        ctx.wait_until(lambda: reader.count >= n, max(60.0, ctx.remaining() - 60), f"{n} counter outputs",
                       poll=take, interval=0.05)
        t_end = time.time()
        cpu_end = process_cpu_s(engine.proc.pid) if engine.proc else 0.0
        t_first = first_ts[0]
        # a clean stop commits whatever is pending; then read on to the end: nothing more may appear
        rc = engine.stop()
        ctx.wait_until(lambda: not reader.take(0.5), 30, "the output to go quiet", interval=0.0)
    finally:
        reader.close()
        engine.stop()
    if reader.count != n or errors or len(last) != keys or set(last.values()) != {n // keys}:
        raise AssertionError(f"counter k={keys}: {reader.count} outputs for {n} events, {len(last)} keys, "
                             f"per-key finals {sorted(set(last.values()))[:5]}, errors {errors}")
    secs = t_end - ready
    eps = n / secs
    ctx.log(f"  k={keys}: {eps:,.0f} events/s over {secs:.1f}s, exit code {rc}")
    app_topics = {t: f"{app_name}.{t}" for t in ("changelog", "inbox", "dlq")}
    records, _markers, records_note = records_written(ctx, {"output": dst, **app_topics})
    cpu_ms = (cpu_end - cpu_ready) * 1000

    def peer(metric: str) -> str | None:
        return QUIX.format(metric) if keys == QUIX_KEYS else None

    cycles = engine.commit_summary()
    if cycles is not None:
        commits, summary = cycles
        commit_rate = commits / secs
        capped = " (its window holds 10,000: at least)" if commits >= 10_000 else ""
        commit_notes = (f"{commits} commit cycles (the engine's own count at shutdown{capped}) over the same "
                        f"{secs:.1f} s; {summary}")
    else:
        busiest = max(reader.skipped.values())
        commit_rate = busiest / secs
        commit_notes = (f"lower bound: transaction markers in the busiest output partition ({busiest}) over "
                        f"the same {secs:.1f} s, ≥ {n / max(busiest, 1):.0f} events per transaction")
    return [
        ctx.row(f"events_per_s@{keys}keys", eps, "events/s", baseline=peer("events_per_s") or EVENTS_PER_S_B2B,
                notes=f"{n} events over {keys} keys ({n // keys} each), {PARTITIONS} partitions, processor in "
                      f"its own process; clock: assignment → {n}th output visible to read_committed "
                      f"{secs:.1f} s (first output {t_first - ready:.1f} s after assignment; from it "
                      f"{n / (t_end - t_first):,.0f}/s); verified exactly {n} outputs, each key 1..{n // keys} "
                      f"in order; {fmt_warnings(engine.warnings())}"),
        ctx.row(f"commits_per_s@{keys}keys", commit_rate, "txn/s", notes=commit_notes),
        ctx.row(f"cpu_ms_per_1k_events@{keys}keys", cpu_ms / n * 1000, "ms", baseline=peer("cpu_ms_per_1k_events"),
                notes=f"the processor process's user+system CPU (all threads) from its assignment (when the "
                      f"benchmark saw it) to the {n}th output visible: {cpu_ms / 1000:.2f} s"),
        ctx.row(f"records_per_event@{keys}keys", records / n, "records", baseline=peer("records_per_event"),
                notes=records_note),
    ]


@benchmark("counter", timeout_s=900, needs=("raw_txn_copy", "quix_counter"))
def counter(ctx: BenchContext) -> list[Row]:
    n = ctx.pick(100_000, 10_000)
    rows: list[Row] = []
    for keys in KEY_COUNTS:
        rows += _run(ctx, n, keys)
    return rows
