"""Run processor instances as real OS processes, kill them with SIGKILL, and read what they left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.kafka_support import REPO, wait_until


class ProcessorProcess:
    """One `python -m processor run ...` process with its log in a file: one engine, or with
    `workers` > 1 a supervisor of that many engine processes; `args` go at the end of the command."""

    def __init__(self, *, spec: str, bootstrap: str, state_dir: Path, instance_id: str,
                 env: Mapping[str, str], log_dir: Path, workers: int = 1, args: Sequence[str] = ()) -> None:
        self.spec = spec
        self.bootstrap = bootstrap
        self.state_dir = state_dir
        self.instance_id = instance_id
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.log_dir = log_dir
        self.workers = workers
        self.args = tuple(args)  # more `processor run` flags
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_path = log_dir / f"{instance_id}-0.log"

    def start(self, extra_env: Mapping[str, str] | None = None) -> ProcessorProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        self.log_path = self.log_dir / f"{self.instance_id}-{self.runs}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor", "run", self.spec, "--bootstrap-servers", self.bootstrap,
                 "--state-dir", str(self.state_dir), "--instance-id", self.instance_id,
                 "--workers", str(self.workers), *self.args],
                env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> ProcessorProcess:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"processor exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return "assigned partitions" in self.log()
        wait_until(ready, timeout, f"processor {self.instance_id} to get its partitions")
        return self

    def wait_log(self, needle: str, timeout: float = 60.0) -> None:
        wait_until(lambda: needle in self.log(), timeout, f"{needle!r} in the processor log")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for a clean exit."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise AssertionError(f"processor did not stop within {timeout}s:\n{self.log()[-4000:]}") from None
        return self.proc.returncode

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"processor still running after {timeout}s")
            time.sleep(0.1)
        return self.proc.returncode

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process still dies of SIGKILL; be tidy anyway
            self.proc.kill()
            self.proc.wait(timeout=30)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def freeze(self) -> None:
        """SIGSTOP: every thread stops at once, sockets stay open (a GC pause, a VM stall)."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after freeze(): the process carries on where it stopped."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (dead, not reaped yet: an orphan's new parent may be slow to reap
    it, or never do so in a container) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
