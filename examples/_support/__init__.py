"""What the saga and agent demo drivers share: a processor subprocess with bounded waits, topic
set-up, a read_committed reader, the step ledger the example apps write, and the read-only
introspection commands (``processor invocations`` / ``processor journal``).

Not part of the processor: just enough plumbing for a demo to start, watch and stop an app.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[2]


class DemoError(Exception):
    """Something the demo waited for or checked did not happen; the message says what."""

    reported = False  # set once a driver has printed it with the processor's log


def say(msg: str = "") -> None:
    print(msg, flush=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- topics --------------------------------------------------------------------------------------

def check_reachable(bootstrap: str) -> None:
    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    except KafkaException as e:
        raise DemoError(f"cannot reach Kafka at {bootstrap}: {e.args[0]}") from None


def ensure_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create the topics that are missing (output topics: the processor creates only its own)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=15)
    missing = [n for n in names if n not in md.topics or md.topics[n].error is not None]
    if missing:
        futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                       for n in missing], operation_timeout=15, request_timeout=20)
        for name, fut in futures.items():
            try:
                fut.result(timeout=30)
                say(f"  created topic {name} ({partitions} partitions)")
            except KafkaException as e:
                if e.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: fine
                    raise DemoError(f"cannot create topic {name}: {e.args[0]}") from None

    def leaders() -> bool:
        md = admin.list_topics(timeout=10)
        return all(n in md.topics and md.topics[n].error is None and md.topics[n].partitions
                   and all(pm.leader >= 0 for pm in md.topics[n].partitions.values()) for n in names)
    wait_for(f"partition leaders of {', '.join(names)}", leaders, 30)


def end_offsets(bootstrap: str, topic: str) -> list[TopicPartition]:
    """Where each partition of `topic` ends now; [] if the topic does not exist."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-offsets-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return []
        out = []
        for part in sorted(md.partitions):
            _low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10, cached=False)
            out.append(TopicPartition(topic, part, high))
        return out
    finally:
        c.close()


class Reader:
    """A read_committed reader of some topic partitions from given offsets, for records whose key
    starts with `prefix` (this run's)."""

    def __init__(self, bootstrap: str, start: list[TopicPartition], prefix: str) -> None:
        self.prefix = prefix
        self.records: list[tuple[str, Any]] = []
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-reader-{uuid.uuid4().hex[:8]}",
                            "enable.auto.commit": False, "isolation.level": "read_committed",
                            "auto.offset.reset": "earliest"})
        self._c.assign(start)

    def poll_until(self, what: str, done: Callable[[list[tuple[str, Any]]], bool], timeout: float,
                   proc: Processor | None = None) -> list[tuple[str, Any]]:
        deadline = time.monotonic() + timeout
        while not done(self.records):
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
            if proc is not None:
                proc.check_alive()
            for m in self._c.consume(100, 0.2):
                if m.error() is not None:
                    continue
                raw: Any = m.key() or b""
                key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                if key.startswith(self.prefix):
                    self.records.append((key, orjson.loads(m.value() or b"null")))
        return self.records

    def close(self) -> None:
        self._c.close()


# -- the processor subprocess --------------------------------------------------------------------

class Processor:
    """``python -m processor run APP_SPEC`` as a subprocess logging to ``<state dir>/processor.log``."""

    def __init__(self, app_spec: str, bootstrap: str, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.app_spec = app_spec
        self.bootstrap = bootstrap
        self.state_dir = state_dir
        self.log_path = state_dir / "processor.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0  # where the current process's lines start in the log

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / ".gitignore").write_text("*\n")
        env = {**os.environ, **self.env,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        # One engine in this process: the demos read its stores under <state dir>/<app> and SIGKILL it.
        cmd = [sys.executable, "-m", "processor", "run", self.app_spec, "--bootstrap-servers", self.bootstrap,
               "--state-dir", str(self.state_dir), "--workers", "1"]
        say(f"  $ python -m processor run {self.app_spec} --bootstrap-servers {self.bootstrap} "
            f"--state-dir {rel(self.state_dir)} --workers 1")
        # A restart (after crash()) appends to the log; the first start of a demo run begins it afresh.
        restart = self.proc is not None
        self._log_from = self.log_path.stat().st_size if restart and self.log_path.exists() else 0
        with self.log_path.open("ab" if restart else "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        say(f"  processor pid {self.proc.pid}, log in {rel(self.log_path)}")

    def log(self) -> str:
        """This process's part of the log."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_from)
            return f.read().decode(errors="replace")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError(f"the processor exited with status {self.proc.returncode}")

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            self.check_alive()
            return "assigned partitions" in self.log()
        wait_for("the processor to be assigned its partitions", ready, timeout)
        line = next(ln for ln in self.log().splitlines() if "assigned partitions" in ln)
        say(f"  ready: {line.split(': ', 1)[-1]}")

    def stop(self, timeout: float) -> int:
        """SIGTERM, then wait; SIGKILL (and an error) if it does not exit in time."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise DemoError(f"the processor did not exit within {timeout:.0f}s of SIGTERM; killed it") from None
        return self.proc.returncode

    def crash(self) -> None:
        """SIGKILL: no commit, no goodbye; whatever was not committed is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def problems(self) -> list[str]:
        """ERROR lines of this process's log, and the exception of each traceback."""
        out, lines = [], self.log().splitlines()
        for i, ln in enumerate(lines):
            if " ERROR " in ln:
                out.append(ln)
            elif ln.startswith("Traceback"):
                end = next((m for m in lines[i + 1:] if m and not m.startswith(" ")), "?")
                out.append(f"    {end}")
        return out


@contextlib.contextmanager
def running(proc: Processor, timeout: float) -> Any:
    """Start `proc`, wait until it owns its partitions; on any failure stop it and show its log."""
    try:
        proc.start()
        proc.wait_ready(timeout)
        yield proc
    except BaseException as e:
        with contextlib.suppress(Exception):
            proc.stop(15)
        if not isinstance(e, KeyboardInterrupt | SystemExit):
            say(f"\n-- {type(e).__name__}: {e}")
        say(f"-- processor stopped; its log (last 40 lines of {rel(proc.log_path)}):")
        say(proc.tail())
        raise


def on_sigterm_exit() -> None:
    def handler(_sig: int, _frame: object) -> None:
        raise SystemExit(143)  # unwinds through `running`, which stops the processor
    signal.signal(signal.SIGTERM, handler)


# -- what the apps did ---------------------------------------------------------------------------

def ledger(path: Path, prefix: str) -> list[list[str]]:
    """The ledger lines (space-separated fields) the example's step bodies wrote for keys starting
    with `prefix`: one line per body execution."""
    if not path.exists():
        return []
    return [ln.split(" ") for ln in path.read_text().splitlines() if ln.startswith(prefix)]


def invocations(state_dir: Path, app: str) -> list[dict[str, Any]]:
    """``processor invocations --json``: reads the stores read-only, fine next to a running processor."""
    out = subprocess.run([sys.executable, "-m", "processor", "invocations", "--state-dir", str(state_dir),
                          "--app", app, "--json"], capture_output=True, cwd=REPO, timeout=60, check=False)
    if out.returncode != 0:
        raise DemoError(f"processor invocations failed: {out.stderr.decode(errors='replace').strip()}")
    return [orjson.loads(ln) for ln in out.stdout.splitlines() if ln.strip()]


def journal(state_dir: Path, app: str, invocation_id: str) -> str:
    out = subprocess.run([sys.executable, "-m", "processor", "journal", invocation_id, "--state-dir",
                          str(state_dir), "--app", app], capture_output=True, cwd=REPO, timeout=60, check=False)
    if out.returncode != 0:
        raise DemoError(f"processor journal failed: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout.decode(errors="replace").rstrip()


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths),
             *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)]
    return "\n".join(("  " + ln).rstrip() for ln in lines)
