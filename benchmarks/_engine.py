"""Helpers of the engine benchmarks: the processor as a separate OS process, and a streaming
read_committed reader of its output. (A private module: the harness does not import it as a benchmark.)"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from benchmarks.harness import BenchContext

REPO = Path(__file__).resolve().parent.parent
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class EngineProcess:
    """`python -m processor run SPEC` in its own process (its own GIL), log to a file in the scratch
    directory. The app's internal topics are registered with the context so they are deleted afterwards."""

    def __init__(self, ctx: BenchContext, spec: str, app_name: str, env: Mapping[str, str],
                 instance_id: str = "bench-1") -> None:
        self.ctx = ctx
        self.spec = spec
        self.app_name = app_name
        self.env = {**os.environ, **env, "BENCH_APP": app_name, "PYTHONPATH": str(REPO)}
        self.instance_id = instance_id
        self.state_dir = ctx.scratch / f"state-{app_name}"
        self.log_path = ctx.scratch / f"{app_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.time() when the process was spawned

    def start(self) -> EngineProcess:
        # internal topics: <app>.inbox/.changelog/.dlq, created by the engine; delete them at the end
        self.ctx.topics.extend(f"{self.app_name}.{t}" for t in ("inbox", "changelog", "dlq"))
        self.started_at = time.time()
        cmd = [sys.executable, "-m", "processor", "run", self.spec, "--bootstrap-servers", self.ctx.bootstrap,
               "--state-dir", str(self.state_dir), "--instance-id", self.instance_id, "--workers", "1"]
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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
        if this engine version logs one."""
        m = re.search(r"commit cycles: (\d+) cycles?,? ?(.*)$", self.log(), re.M)
        return (int(m.group(1)), m.group(2)) if m else None

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
