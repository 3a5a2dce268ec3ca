"""Engine benchmark: the per-key counter (a virtual object: get, one durable step, set, emit per event).

N events over K keys are produced to a 4-partition input first; then the processor runs as its own OS
process (`python -m processor run benchmarks.apps.counter_app:app`) and the benchmark process counts
its output with a streaming read_committed consumer. One key's events run one after another and each
waits for one commit (its step's result), so a commit carries at most one event per key: K bounds the
parallelism per commit. `run_ours` is also what `counter_peers` runs beside Quix Streams.
"""

from __future__ import annotations

import time

from benchmarks import _metrics
from benchmarks._engine import (
    CounterCheck,
    CounterRun,
    EngineProcess,
    OutputReader,
    count_outputs,
    fmt_warnings,
    has_workers_flag,
    read_to_quiet,
    records_written,
    tree_cpu_s,
)
from benchmarks.harness import BenchContext, Row, benchmark
from benchmarks.raw_txn_copy import EVENTS_PER_S_B2B

PARTITIONS = 4
KEY_COUNTS = (100, 10_000)
APP = "benchmarks.apps.counter_app:app"


def run_ours(ctx: BenchContext, src: str, n: int, keys: int, *, tag: str, step: bool = True, workers: int = 1,
             budget_s: float | None = None) -> CounterRun:
    """Run our counter (with or without its step, as `workers` engine processes) over `src`, which holds
    `n` events over `keys` keys, into a new output topic; verify the output and measure. Fails after
    `budget_s` of counting (default: what the benchmark's deadline leaves)."""
    dst = ctx.create_topic(f"out-{tag}", PARTITIONS)
    app_name = ctx.unique(f"app-{tag}")
    engine = EngineProcess(ctx, APP, app_name, {"BENCH_INPUT": src, "BENCH_OUTPUT": dst,
                                                "BENCH_COUNTER_STEP": "1" if step else "0"}, workers=workers,
                           admin=True)
    reader = OutputReader(ctx, dst, PARTITIONS)
    check = CounterCheck(f"our counter {tag}")
    budget = budget_s if budget_s is not None else max(60.0, ctx.remaining() - 60)
    try:
        engine.start()
        ready = engine.wait_ready()
        pid = engine.proc.pid if engine.proc else 0
        scrapes = [_scrape(ctx, engine.admin_urls())]  # before the CPU mark: its cost is not the window's
        cpu_ready = tree_cpu_s(pid)
        ctx.log(f"{tag}: processor ready {ready - engine.started_at:.1f}s after spawn; counting {n} outputs")
        t_end = count_outputs(ctx, reader, check, n, since=ready, budget_s=budget, alive=engine.check_alive)
        cpu_end = tree_cpu_s(pid)
        scrapes.append(_scrape(ctx, engine.admin_urls()))
        rc = engine.stop()  # a clean stop commits whatever is pending: nothing more may appear
        read_to_quiet(ctx, reader, check)
    finally:
        reader.close()
        engine.stop()
    check.verify(n, keys)
    secs = t_end - ready
    t_first = check.first_created or t_end
    cpu_s = cpu_end - cpu_ready
    records, _markers, records_note = records_written(ctx, {"output": dst, **engine.internal_topics()})
    ctx.log(f"  {tag}: {n / secs:,.0f} events/s over {secs:.1f}s, {cpu_s / n * 1e6:.0f} CPU ms/1k, "
            f"{records / n:.2f} records/event, exit code {rc}")
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
    metrics_note = _metrics_note(ctx, tag, scrapes)
    if metrics_note:
        commit_notes += f"; {metrics_note}"
    how = "get, ctx.run, set, emit" if step else "get, set, emit (no step)"
    how += f", --workers {workers}" if has_workers_flag() else ""
    return CounterRun(
        events_per_s=n / secs, cpu_ms_per_1k=cpu_s / n * 1e6, records_per_event=records / n, seconds=secs,
        notes=f"{n} events over {keys} keys ({n // keys} each), {PARTITIONS} partitions, {how}, processor in its "
              f"own process; clock: assignment → {n}th output visible to read_committed "
              f"{secs:.1f} s (first output {t_first - ready:.1f} s after assignment; from it "
              f"{n / max(t_end - t_first, 1e-9):,.0f}/s); verified exactly {n} outputs, each key 1..{n // keys} "
              f"in order; {fmt_warnings(engine.warnings())}",
        cpu_notes=f"the processor's user+system CPU (all threads; with workers, the supervisor and all its "
                  f"children) from its assignment (when the benchmark saw it) to the {n}th output visible: "
                  f"{cpu_s:.2f} s",
        records_notes=records_note, commit_rate=commit_rate, commit_notes=commit_notes)


def _scrape(ctx: BenchContext, urls: list[str]) -> tuple[float, _metrics.Samples] | None:
    """(time.time(), the engine's /metrics summed over its workers), or None without an endpoint."""
    if not urls:
        return None
    try:
        return time.time(), _metrics.scrape(urls)
    except OSError as e:
        ctx.log(f"  /metrics not scraped: {e}")
        return None


def _metrics_note(ctx: BenchContext, tag: str, scrapes: list[tuple[float, _metrics.Samples] | None]) -> str:
    """Log the table of how the engine's figures moved between the two scrapes; the line for notes."""
    first, last = scrapes
    if first is None or last is None:
        return ""
    secs = last[0] - first[0]
    rows = _metrics.deltas(first[1], last[1])
    ctx.log(f"  {tag}: /metrics near the start and at the end of the window ({secs:.1f} s apart):\n"
            + "\n".join("    " + ln for ln in _metrics.table(rows, secs).splitlines()))
    return _metrics.summary(rows, secs)


def _rows(ctx: BenchContext, keys: int, run: CounterRun) -> list[Row]:
    return [
        ctx.row(f"events_per_s@{keys}keys", run.events_per_s, "events/s", baseline=EVENTS_PER_S_B2B,
                notes=run.notes),
        ctx.row(f"commits_per_s@{keys}keys", run.commit_rate, "txn/s", notes=run.commit_notes),
        ctx.row(f"cpu_ms_per_1k_events@{keys}keys", run.cpu_ms_per_1k, "ms", notes=run.cpu_notes),
        ctx.row(f"records_per_event@{keys}keys", run.records_per_event, "records", notes=run.records_notes),
    ]


@benchmark("counter", timeout_s=900, needs=("raw_txn_copy",))
def counter(ctx: BenchContext) -> list[Row]:
    n = ctx.pick(100_000, 10_000)
    rows: list[Row] = []
    for keys in KEY_COUNTS:
        src = ctx.create_topic(f"in-k{keys}", PARTITIONS)
        ctx.log(f"produce {n} events over {keys} keys")
        ctx.produce_events(src, n, keys=keys, value_bytes=100)
        rows += _rows(ctx, keys, run_ours(ctx, src, n, keys, tag=f"k{keys}"))
    return rows
