"""Helpers of the engine benchmarks: the processor as a separate OS process, a streaming read_committed
reader of its output, the per-key counter's checks and CPU accounting of a process tree. (A private
module: the harness does not import it as a benchmark.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from benchmarks._metrics import admin_urls
from benchmarks.harness import BenchContext, BenchTimeout

REPO = Path(__file__).resolve().parent.parent
INTERNAL_TOPICS = ("changelog", "steps", "inbox", "dlq", "results")  # <app>.<suffix>, created by the engine
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class EngineProcess:
    """`python -m processor run SPEC` in its own process (its own GIL), log to a file in the scratch
    directory. The app's internal topics are registered with the context so they are deleted afterwards.
    `workers`: passed as `--workers N` when this checkout's CLI has that option (so single-worker rows
    stay single-worker whatever its default); without it only 1 is possible. `admin`: with
    `--admin-port 0` (each worker's admin endpoint on a free port; ``admin_urls`` reads them from the
    log) when this checkout's CLI has that option."""

    def __init__(self, ctx: BenchContext, spec: str, app_name: str, env: Mapping[str, str],
                 instance_id: str = "bench-1", workers: int = 1, admin: bool = False) -> None:
        self.ctx = ctx
        self.spec = spec
        self.app_name = app_name
        self.env = {**os.environ, **env, "BENCH_APP": app_name, "PYTHONPATH": str(REPO)}
        self.instance_id = instance_id
        self.workers = workers
        self.admin = admin and has_run_flag("--admin-port")
        self.state_dir = ctx.scratch / f"state-{app_name}"
        self.log_path = ctx.scratch / f"{app_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.time() when the process was spawned

    def start(self) -> EngineProcess:
        # the internal topics the engine creates: delete them at the end
        self.ctx.topics.extend(self.internal_topics().values())
        self.started_at = time.time()
        cmd = [sys.executable, "-m", "processor", "run", self.spec, "--bootstrap-servers", self.ctx.bootstrap,
               "--state-dir", str(self.state_dir), "--instance-id", self.instance_id]
        if has_workers_flag():
            cmd += ["--workers", str(self.workers)]
        elif self.workers != 1:
            raise RuntimeError(f"`processor run` has no --workers option here: cannot run {self.workers} workers")
        if self.admin:
            cmd += ["--admin-port", "0", "--admin-host", "127.0.0.1"]
            self.ctx.topics.append(f"{self.app_name}.instances")  # its registry record
        if profile := os.environ.get("BENCH_PROFILE"):
            # BENCH_PROFILE=DIR: sample the processor with py-spy (collapsed stacks, all threads' CPU)
            out = Path(profile) / f"{self.app_name}.folded"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "--rate", "100",
                   "--threads", "--nonblocking", "-o", str(out), "--", *cmd]
            self.ctx.log(f"profiling the processor into {out}")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def internal_topics(self) -> dict[str, str]:
        """{suffix: topic} of the app's internal topics."""
        return {t: f"{self.app_name}.{t}" for t in INTERNAL_TOPICS}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admin_urls(self, timeout: float = 10.0) -> list[str]:
        """The admin endpoints of its workers (one each), once the log names them all; [] without
        ``admin`` (or when they do not show within `timeout`: what showed)."""
        if not self.admin:
            return []
        with contextlib.suppress(BenchTimeout):
            self.ctx.wait_until(lambda: len(admin_urls(self.log())) >= self.workers, timeout,
                                f"processor {self.app_name}'s admin endpoints", interval=0.1)
        return admin_urls(self.log())

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"processor exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for the first assignment; returns the time.time() of its log line."""
        def ready() -> bool:
            self.check_alive()
            return "assigned partitions" in self.log()
        self.ctx.wait_until(ready, timeout, f"processor {self.app_name} to get its partitions", interval=0.1)
        return self.log_time("assigned partitions") or time.time()

    def log_time(self, needle: str) -> float | None:
        """time.time() of the first log line containing `needle` (the CLI logs local asctime, ms)."""
        for line in self.log().splitlines():
            if needle in line and (m := _LOG_TIME.match(line)):
                return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM (a clean stop: the engine commits what is pending) and wait; SIGKILL after `timeout`."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            # under py-spy, stop the processor itself: py-spy writes its profile once its child exits
            for pid in self._children(p.pid) if os.environ.get("BENCH_PROFILE") else [p.pid]:
                os.kill(pid, signal.SIGTERM)
            try:
                p.wait(timeout=max(1.0, min(timeout, self.ctx.remaining() + 10)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)
                self.ctx.log(f"processor {self.app_name} did not stop within {timeout:.0f}s: killed")
        return p.returncode

    def commit_summary(self) -> tuple[int, str] | None:
        """(cycles, the rest of the line) from the engine's shutdown line "commit cycles: N cycles, ..."
        if this engine version logs one; with several workers, their cycles summed and the first's rest."""
        found = re.findall(r"commit cycles: (\d+) cycles?,? ?(.*)$", self.log(), re.M)
        if not found:
            return None
        rest = found[0][1] + (f" (the first of {len(found)} workers' lines)" if len(found) > 1 else "")
        return sum(int(c) for c, _ in found), rest

    @staticmethod
    def _children(pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()] or [pid]
        except OSError:
            return [pid]

    def warnings(self) -> list[str]:
        return [ln for ln in self.log().splitlines() if " WARNING " in ln or " ERROR " in ln]


class OutputReader:
    """A read_committed consumer of every partition of `topic` from offset 0, assigned (no group).
    Also counts the offsets read_committed skips between records of a partition: transaction markers
    (one per transaction that wrote to the partition) and aborted records."""

    def __init__(self, ctx: BenchContext, topic: str, partitions: int) -> None:
        self.ctx = ctx
        self.topic = topic
        self.consumer = Consumer(ctx.config(**{
            "group.id": ctx.unique("reader"), "isolation.level": "read_committed",
            "enable.auto.commit": False, "fetch.wait.max.ms": 10}))
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.last: dict[int, int] = {}
        self.skipped: dict[int, int] = {p: 0 for p in range(partitions)}
        self.count = 0

    def take(self, timeout: float) -> list[Message]:
        """Records visible now: waits up to `timeout` for the first, then takes what is already fetched."""
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        msgs = [first, *self.consumer.consume(10_000, 0)]
        out = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            p, o = m.partition() or 0, m.offset() or 0
            self.skipped[p] += o - self.last.get(p, -1) - 1
            self.last[p] = o
            out.append(m)
        self.count += len(out)
        return out

    def close(self) -> None:
        self.consumer.close()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all its threads (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` and all its descendants so far, all threads: a
    supervisor and its workers. Each process counts its own time plus that of its children it has
    reaped (cutime, cstime), so a worker that died and was restarted still counts."""
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime: fields 14-17
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # it exited meanwhile: its time moved to its parent's cutime/cstime
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def has_workers_flag() -> bool:
    """Whether this checkout's `processor run` takes `--workers N` (its --help mentions it)."""
    return has_run_flag("--workers")


def has_run_flag(flag: str) -> bool:
    """Whether this checkout's `processor run --help` mentions `flag`."""
    return flag in _run_help()


@functools.cache
def _run_help() -> str:
    out = subprocess.run([sys.executable, "-m", "processor", "run", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out.stdout


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterRun:
    """One measured run of a per-key counter (ours, Quix Streams' or the raw copy) over one input: the
    three numbers issue 8 compares, and notes on how each was measured and what was verified."""

    events_per_s: float
    cpu_ms_per_1k: float
    records_per_event: float
    seconds: float  # the clock: assignment -> the n-th output visible to read_committed
    notes: str
    cpu_notes: str
    records_notes: str
    commit_rate: float  # transactions per second (an engine count, or a lower bound from markers)
    commit_notes: str


class CounterCheck:
    """Checks a per-key counter's outputs {"key", "count"} as they become visible: every key counts
    1, 2, ... in order, and at the end each of `keys` keys stands at n / keys."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last: dict[str, int] = {}
        self.errors: list[str] = []
        self.count = 0
        self.first_seen: float | None = None  # time.time() when the first output was read
        self.first_created: float | None = None  # its CreateTime (the writer's produce())

    def add(self, msgs: list[Message]) -> int:
        for m in msgs:
            if self.first_seen is None:
                self.first_seen = time.time()
                self.first_created = (m.timestamp()[1] or 0) / 1000.0
            v: Any = orjson.loads(m.value() or b"null")
            k, c = v["key"], v["count"]
            if c != self.last.get(k, 0) + 1 and len(self.errors) < 5:
                self.errors.append(f"key {k}: count {c} after {self.last.get(k, 0)}")
            self.last[k] = c
        self.count += len(msgs)
        return len(msgs)

    def verify(self, n: int, keys: int) -> None:
        if self.count != n or self.errors or len(self.last) != keys or set(self.last.values()) != {n // keys}:
            raise AssertionError(f"{self.what}: {self.count} outputs for {n} events, {len(self.last)} keys, "
                                 f"per-key finals {sorted(set(self.last.values()))[:5]}, errors {self.errors}")


def count_outputs(ctx: BenchContext, reader: OutputReader, check: CounterCheck, n: int, *, since: float,
                  budget_s: float, alive: Callable[[], None]) -> float:
    """Read the output until `n` records are visible (checking each); returns time.time() then. Fails after
    `budget_s` (or at the benchmark's deadline) with the progress so far: outputs and rate since `since`."""
    def take(t: float) -> None:
        alive()
        check.add(reader.take(t))

    try:
        ctx.wait_until(lambda: check.count >= n, budget_s, f"{n} outputs of {check.what}", poll=take,
                       interval=0.05)
    except BenchTimeout as e:
        secs = time.time() - since
        raise BenchTimeout(f"{e}; {check.count:,} of {n:,} outputs visible after {secs:.0f} s "
                           f"({check.count / max(secs, 1e-9):,.0f}/s so far)") from None
    return time.time()


def read_to_quiet(ctx: BenchContext, reader: OutputReader, check: CounterCheck) -> None:
    """After the writer stopped: read on until nothing more appears (nothing may: every output counted)."""
    ctx.wait_until(lambda: not check.add(reader.take(0.5)), 30, f"the output of {check.what} to go quiet",
                   interval=0.0)


def records_written(ctx: BenchContext, topics: Mapping[str, str]) -> tuple[int, dict[str, int], str]:
    """Data records written to `topics` ({label: topic}, absent ones count 0), counted read_uncommitted
    (aborted ones were written too). Returns (total, {label: transaction markers in its busiest partition},
    a note splitting them); markers are end offset - data records, one per transaction per partition."""
    c = Consumer(ctx.config(**{"group.id": ctx.unique("ends")}))
    total, markers, parts = 0, {}, []
    existing = ctx.admin.list_topics(timeout=10).topics
    try:
        for label, topic in topics.items():
            if topic not in existing:
                markers[label] = 0
                parts.append(f"{label} 0 (no topic)")
                continue
            ps = sorted(existing[topic].partitions)
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in ps}
            data = dict.fromkeys(ps, 0)
            for p, _k, _v in ctx.drain(topic, isolation="read_uncommitted", timeout=120):
                data[p] += 1
            total += sum(data.values())
            markers[label] = max(ends[p] - data[p] for p in ps)
            parts.append(f"{label} {sum(data.values())} (end offsets {sum(ends.values())})")
    finally:
        c.close()
    return total, markers, ("records written (read_uncommitted): " + " + ".join(parts)
                            + "; end offset - records = transaction markers")


def fmt_warnings(lines: list[str], limit: int = 2) -> str:
    if not lines:
        return "no warnings in the processor log"
    shown = "; ".join(ln.split(": ", 1)[-1][:120] for ln in lines[:limit])
    return f"{len(lines)} warning(s) in the processor log, e.g. {shown}"
