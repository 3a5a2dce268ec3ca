"""A broker of a test's own, on its own port and data dir, that the test may stop, kill and restart
(the session broker is shared and must never be touched)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.kafka_support import BROKER_SH, Kafka, _warm, wait_until


def _free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65000:
            with socket.socket() as s2:  # the controller listens on port + 1
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a broker")


class OwnBroker:
    """``deploy/kafka/broker.sh`` with KAFKA_PORT/KAFKA_WORK of this test."""

    def __init__(self, work: Path) -> None:
        self.port = _free_port()
        self.work = work
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_WORK": str(work)}
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.restarts = 0

    def _sh(self, *args: str, timeout: float = 180) -> str:
        out = subprocess.run([str(BROKER_SH), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"broker.sh {' '.join(args)} failed:\n{out.stderr[-3000:]}")
        return out.stdout

    def start(self) -> OwnBroker:
        self._sh("start")
        return self

    def kafka(self) -> Kafka:
        return _warm(Kafka(bootstrap=self.bootstrap, origin="own broker"))

    def pid(self) -> int:
        return int((self.work / "broker.pid").read_text())

    def stop(self) -> None:
        """Clean stop (SIGTERM to the JVM, as broker.sh does)."""
        self._sh("stop")

    def kill(self) -> None:
        """SIGKILL of the broker JVM: no controlled shutdown."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_until(gone, 30, "the broker JVM to die")
        (self.work / "broker.pid").unlink(missing_ok=True)

    def restart(self, *, down_s: float, kill: bool = False) -> None:
        (self.kill if kill else self.stop)()
        time.sleep(down_s)  # the outage itself: the processors must ride it out
        self.start()
        self.restarts += 1

    def close(self) -> None:
        try:
            self._sh("stop", timeout=120)
        except Exception:
            with contextlib.suppress(OSError, ValueError):
                os.kill(self.pid(), signal.SIGKILL)
