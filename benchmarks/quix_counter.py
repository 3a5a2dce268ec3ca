"""Peer benchmark: Quix Streams' exactly-once per-key counter, on the same broker and input as `counter`.

N events over 100 keys (the input of `counter@100keys`) are produced to a 4-partition topic once; then
for each commit interval (0.1 s and Quix's default) a Quix application (`benchmarks/apps/
quix_counter_app.py`, quixstreams from the `bench` extra) runs as its own OS process in a fresh consumer
group: `processing_guarantee="exactly-once"`, state in RocksDB backed by its changelog topic, per event
`state.get`, `state.set` and one output record {"key", "count"}. The benchmark process counts the
outputs with a streaming read_committed consumer and checks every key's counts are 1..N/K in order.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

from benchmarks._engine import REPO, OutputReader, process_cpu_s, records_written
from benchmarks.harness import BenchContext, Row, benchmark
from benchmarks.raw_txn_copy import EVENTS_PER_S_B2B

PARTITIONS = 4
KEYS = 100
APP = "benchmarks.apps.quix_counter_app"
INTERVALS = (("100ms", "0.1"), ("default", "default"))  # (row tag, BENCH_COMMIT_INTERVAL)
_MARK = re.compile(r"^bench: (assigned|first event) ([\d.]+)(?: cpu ([\d.]+))?$", re.M)


class QuixProcess:
    """The Quix app in its own process (its own GIL), stdout and stderr to a log file in the scratch dir."""

    def __init__(self, ctx: BenchContext, group: str, env: Mapping[str, str]) -> None:
        self.ctx = ctx
        self.group = group
        self.env = {**os.environ, **env, "BENCH_APP": group, "BENCH_BOOTSTRAP": ctx.bootstrap,
                    "BENCH_STATE_DIR": str(ctx.scratch / f"state-{group}"), "PYTHONPATH": str(REPO)}
        self.log_path = ctx.scratch / f"{group}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> QuixProcess:
        self.env["BENCH_DEADLINE"] = str(time.time() + self.ctx.remaining())  # the app stops itself then
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", APP], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def marks(self) -> dict[str, tuple[float, float | None]]:
        """The app's marker lines: {"assigned": (time, None), "first event": (time, process CPU s)}."""
        return {m[1]: (float(m[2]), float(m[3]) if m[3] else None) for m in _MARK.finditer(self.log())}

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"quix app exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for the first assignment; returns its time.time()."""
        def ready() -> bool:
            self.check_alive()
            return "assigned" in self.marks()
        self.ctx.wait_until(ready, timeout, f"quix app {self.group} to get its partitions", interval=0.1)
        return self.marks()["assigned"][0]

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM (Quix stops its loop and commits its last checkpoint) and wait; SIGKILL after `timeout`."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=max(1.0, min(timeout, self.ctx.remaining() + 10)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)
                self.ctx.log(f"quix app {self.group} did not stop within {timeout:.0f}s: killed")
        return p.returncode

    def warnings(self) -> list[str]:
        return [ln for ln in self.log().splitlines() if "[WARNING]" in ln or "[ERROR]" in ln]


def _changelogs(ctx: BenchContext, group: str) -> list[str]:
    """The changelog topics Quix created for the app's stores (named after its consumer group)."""
    return [t for t in ctx.admin.list_topics(timeout=10).topics if t.startswith("changelog__") and group in t]


def _run(ctx: BenchContext, src: str, n: int, tag: str, interval: str) -> list[Row]:
    dst = ctx.create_topic(f"out-{tag}", PARTITIONS)
    group = ctx.unique(f"app-{tag}")
    quix = QuixProcess(ctx, group, {"BENCH_INPUT": src, "BENCH_OUTPUT": dst, "BENCH_COMMIT_INTERVAL": interval})
    reader = OutputReader(ctx, dst, PARTITIONS)
    last: dict[str, int] = {}
    errors: list[str] = []
    first_out: list[float] = []

    def take(t: float) -> None:
        quix.check_alive()
        for m in reader.take(t):
            if not first_out:
                first_out.append(time.time())
            v: Any = orjson.loads(m.value() or b"null")
            k, c = v["key"], v["count"]
            if c != last.get(k, 0) + 1 and len(errors) < 5:
                errors.append(f"key {k}: count {c} after {last.get(k, 0)}")
            last[k] = c

    try:
        quix.start()
        ready = quix.wait_ready()
        ctx.log(f"quix app ready; counting {n} outputs (commit interval {interval})")
        ctx.wait_until(lambda: reader.count >= n, max(60.0, ctx.remaining() - 60), f"{n} quix counter outputs",
                       poll=take, interval=0.05)
        t_end = time.time()
        cpu_end = process_cpu_s(quix.pid)
        rc = quix.stop()  # its last checkpoint commits nothing new: read on, nothing more may appear
        ctx.wait_until(lambda: not reader.take(0.5), 30, "the output to go quiet", interval=0.0)
    finally:
        reader.close()
        quix.stop()
        changelogs = _changelogs(ctx, group)
        ctx.topics.extend(changelogs)  # deleted with the benchmark's topics
    if len(changelogs) != 1:
        raise AssertionError(f"expected one changelog topic of {group}, found {changelogs}")
    changelog = changelogs[0]
    if reader.count != n or errors or len(last) != KEYS or set(last.values()) != {n // KEYS}:
        raise AssertionError(f"quix counter @{tag}: {reader.count} outputs for {n} events, {len(last)} keys, "
                             f"per-key finals {sorted(set(last.values()))[:5]}, errors {errors}")
    t_first_event, cpu_first = quix.marks()["first event"]
    secs = t_end - ready
    eps = n / secs
    cpu_ms = (cpu_end - (cpu_first or 0.0)) * 1000
    records, markers, records_note = records_written(ctx, {"output": dst, "changelog": changelog})
    shown = re.search(r"commit interval ([\d.]+) s", quix.log())
    how = f"{shown.group(1) if shown else interval} s" + (" (Quix's default)" if interval == "default" else "")
    ctx.log(f"  @{tag}: {eps:,.0f} events/s over {secs:.1f}s, {cpu_ms / n * 1000:.0f} CPU ms/1k, "
            f"{records / n:.2f} records/event, exit code {rc}")
    warns = quix.warnings()
    warn_note = (f"{len(warns)} warning(s) in the app log, e.g. {warns[0][-120:]}" if warns
                 else "no warnings in the app log")
    return [
        ctx.row(f"events_per_s@{tag}", eps, "events/s", baseline=EVENTS_PER_S_B2B,
                notes=f"{n} events over {KEYS} keys ({n // KEYS} each), {PARTITIONS} partitions, exactly-once, "
                      f"commit interval {how}, app in its own process; clock: assignment → {n}th output visible "
                      f"to read_committed {secs:.1f} s (first event {t_first_event - ready:.2f} s, first output "
                      f"{first_out[0] - ready:.2f} s after assignment; from the first event "
                      f"{n / (t_end - t_first_event):,.0f}/s); ≥ {markers['output']} transactions (markers in the "
                      f"busiest output partition); verified exactly {n} outputs, each key 1..{n // KEYS} in order; "
                      f"{warn_note}"),
        ctx.row(f"cpu_ms_per_1k_events@{tag}", cpu_ms / n * 1000, "ms",
                notes=f"the app process's user+system CPU (all threads) from its first event to the {n}th "
                      f"output visible: {cpu_ms / 1000:.2f} s; over the same window the wall clock was "
                      f"{t_end - t_first_event:.1f} s"),
        ctx.row(f"records_per_event@{tag}", records / n, "records", notes=records_note),
    ]


@benchmark("quix_counter", timeout_s=600, needs=("raw_txn_copy",))
def quix_counter(ctx: BenchContext) -> list[Row]:
    if importlib.util.find_spec("quixstreams") is None:
        raise RuntimeError("quixstreams is not installed: pip install -e '.[bench]'")
    n = ctx.pick(100_000, 10_000)
    src = ctx.create_topic("in", PARTITIONS)
    ctx.log(f"produce {n} events over {KEYS} keys")
    ctx.produce_events(src, n, keys=KEYS, value_bytes=100)
    rows: list[Row] = []
    failures: list[str] = []
    for tag, interval in INTERVALS:  # one interval's failure does not hide the other's rows
        try:
            rows += _run(ctx, src, n, tag, interval)
        except Exception as e:
            ctx.log(f"  @{tag} FAILED: {e}")
            failures.append(f"@{tag}: {str(e).splitlines()[0]}")
    if failures:
        raise AssertionError("; ".join(failures))
    return rows
