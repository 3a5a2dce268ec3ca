"""The peer: Quix Streams' exactly-once per-key counter, run by `counter_peers` beside ours.

A Quix application (`benchmarks/apps/quix_counter_app.py`, quixstreams from the `bench` extra) runs as
its own OS process in a fresh consumer group over an input of N events over K keys:
`processing_guarantee="exactly-once"`, state in RocksDB backed by its changelog topic, per event
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

from benchmarks._engine import (
    REPO,
    CounterCheck,
    CounterRun,
    OutputReader,
    count_outputs,
    process_cpu_s,
    read_to_quiet,
    records_written,
)
from benchmarks.harness import BenchContext

PARTITIONS = 4
APP = "benchmarks.apps.quix_counter_app"
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


def run_quix(ctx: BenchContext, src: str, n: int, keys: int, *, tag: str, interval: str,
             budget_s: float | None = None) -> CounterRun:
    """Run Quix Streams' counter with commit interval `interval` (seconds, or "default") over `src`, which
    holds `n` events over `keys` keys, into a new output topic, in a fresh consumer group; verify the
    output and measure. Fails after `budget_s` of counting (default: what the benchmark's deadline leaves)."""
    if importlib.util.find_spec("quixstreams") is None:
        raise RuntimeError("quixstreams is not installed: see benchmarks/README.md (the `bench` extra)")
    dst = ctx.create_topic(f"out-{tag}", PARTITIONS)
    group = ctx.unique(f"app-{tag}")
    quix = QuixProcess(ctx, group, {"BENCH_INPUT": src, "BENCH_OUTPUT": dst, "BENCH_COMMIT_INTERVAL": interval})
    reader = OutputReader(ctx, dst, PARTITIONS)
    check = CounterCheck(f"Quix counter {tag}")
    budget = budget_s if budget_s is not None else max(60.0, ctx.remaining() - 60)
    try:
        quix.start()
        ready = quix.wait_ready()
        ctx.log(f"{tag}: quix app ready; counting {n} outputs (commit interval {interval})")
        t_end = count_outputs(ctx, reader, check, n, since=ready, budget_s=budget, alive=quix.check_alive)
        cpu_end = process_cpu_s(quix.pid)
        rc = quix.stop()  # its last checkpoint commits nothing new: read on, nothing more may appear
        read_to_quiet(ctx, reader, check)
    finally:
        reader.close()
        quix.stop()
        changelogs = _changelogs(ctx, group)
        ctx.topics.extend(changelogs)  # deleted with the benchmark's topics
    if len(changelogs) != 1:
        raise AssertionError(f"expected one changelog topic of {group}, found {changelogs}")
    check.verify(n, keys)
    t_first_event, cpu_first = quix.marks()["first event"]
    secs = t_end - ready
    cpu_s = cpu_end - (cpu_first or 0.0)
    records, markers, records_note = records_written(ctx, {"output": dst, "changelog": changelogs[0]})
    shown = re.search(r"commit interval ([\d.]+) s", quix.log())
    how = f"{shown.group(1) if shown else interval} s" + (" (Quix's default)" if interval == "default" else "")
    ctx.log(f"  {tag}: {n / secs:,.0f} events/s over {secs:.1f}s, {cpu_s / n * 1e6:.0f} CPU ms/1k, "
            f"{records / n:.2f} records/event, exit code {rc}")
    warns = quix.warnings()
    warn_note = (f"{len(warns)} warning(s) in the app log, e.g. {warns[0][-120:]}" if warns
                 else "no warnings in the app log")
    first_out = check.first_seen or t_end
    return CounterRun(
        events_per_s=n / secs, cpu_ms_per_1k=cpu_s / n * 1e6, records_per_event=records / n, seconds=secs,
        notes=f"{n} events over {keys} keys ({n // keys} each), {PARTITIONS} partitions, exactly-once, commit "
              f"interval {how}, app in its own process; clock: assignment → {n}th output visible to "
              f"read_committed {secs:.1f} s (first event {t_first_event - ready:.2f} s, first output "
              f"{first_out - ready:.2f} s after assignment; from the first event "
              f"{n / (t_end - t_first_event):,.0f}/s); verified exactly {n} outputs, each key 1..{n // keys} "
              f"in order; {warn_note}",
        cpu_notes=f"the app process's user+system CPU (all threads) from its first event to the {n}th output "
                  f"visible: {cpu_s:.2f} s; over the same window the wall clock was {t_end - t_first_event:.1f} s",
        records_notes=records_note, commit_rate=markers["output"] / secs,
        commit_notes=f"lower bound: ≥ {markers['output']} transactions (markers in the busiest output partition)")
