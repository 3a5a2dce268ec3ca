"""The chaos suite's own Kafka broker: deploy/kafka/broker.sh on a free port with its data in a temp
dir, so the suite can stop, SIGKILL and restart it without touching the shared test broker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.kafka_support import BROKER_SH

START_TIMEOUT = 180.0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(first: int, tries: int = 50) -> int:
    """The first port p >= `first` (stepping by 2) with p and p+1 free: broker.sh puts the controller on p+1."""
    for port in range(first, first + 2 * tries, 2):
        if _port_free(port) and _port_free(port + 1):
            return port
    raise RuntimeError(f"no free port pair in {first}..{first + 2 * tries}")


class OwnBroker:
    """One single-node broker run by broker.sh with KAFKA_PORT/KAFKA_WORK of its own."""

    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_WORK": str(work),
                    "KAFKA_START_TIMEOUT": str(int(START_TIMEOUT))}
        self.pidfile = work / "broker.pid"
        self.starts = 0

    def _sh(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BROKER_SH), action], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> float:
        """Start (or restart) the broker; returns how long it took."""
        t0 = time.monotonic()
        out = self._sh("start", START_TIMEOUT + 30)
        if out.returncode != 0:
            raise RuntimeError(f"chaos broker on {self.bootstrap} failed to start:\n{out.stderr[-3000:]}")
        self.starts += 1
        return time.monotonic() - t0

    def stop(self) -> None:
        """Clean stop: SIGTERM, controlled shutdown (broker.sh escalates to SIGKILL after 30 s)."""
        out = self._sh("stop", 90)
        if out.returncode != 0:
            raise RuntimeError(f"chaos broker stop failed:\n{out.stderr[-3000:]}")

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL of the broker JVM by the pid broker.sh recorded when it started it."""
        pid = self.pid()
        if pid is None:
            raise RuntimeError("chaos broker has no pid file: not running?")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker pid {pid} still alive {timeout}s after SIGKILL")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        path = self.work / "logs" / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed JVM reparented to init may linger as a zombie for a moment: that is dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
