"""``processor run --workers N``: one supervisor process and N engine processes of the same app.

An engine runs its Python on one core at a time (the GIL), so N cores want N processes. Each worker
is ``python -m processor run ... --workers 1``, the single-engine command: its own consumer-group
member with its own state dir (``<state-dir>/worker-<i>``) and instance id (``<id>-w<i>``). The
supervisor starts them, restarts one that died (with backoff), stops them all on SIGTERM or SIGINT,
and gives up with the worker's exit code when one reports a configuration error. A worker never
outlives the supervisor: it asks the kernel for SIGTERM when its parent dies (``die_with_parent``).
Why and at what cost: docs/decisions/005-workers.md.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from processor._engine.statedir import is_locked

log = logging.getLogger("processor.workers")

CONFIGURATION_ERROR = 2  # the CLI's exit code for a ConfigurationError: restarting cannot help
POLL_S = 0.1
KILL_WAIT_S = 5.0        # after SIGKILL, for the kernel to take the process down
PR_SET_PDEATHSIG = 1     # <linux/prctl.h>


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """How long a worker that died waits before it starts again: ``first_s``, doubling up to
    ``max_s``; a worker that had run for ``reset_after_s`` starts over at ``first_s``."""

    first_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def next_delay(self, previous: float | None, ran_s: float) -> float:
        if previous is None or ran_s >= self.reset_after_s:
            return self.first_s
        return min(previous * 2, self.max_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """One worker: its number, instance id, state dir, and the command that runs it."""

    index: int
    instance_id: str
    state_dir: Path
    argv: tuple[str, ...]


def worker_specs(*, app_spec: str, bootstrap: str, state_dir: Path, base_id: str, log_level: str,
                 workers: int, extra: Sequence[str] = (),
                 extra_args: Callable[[int], tuple[str, ...]] = lambda _i: ()) -> list[WorkerSpec]:
    """The N single-engine commands of ``processor run --workers N``, each told our pid so it can
    arm its parent-death signal; `extra` arguments go to every worker, `extra_args(i)` to worker i
    (its admin endpoint)."""
    specs = []
    for i in range(workers):
        instance_id, wdir = f"{base_id}-w{i}", state_dir / f"worker-{i}"
        argv = (sys.executable, "-m", "processor", "run", app_spec, "--workers", "1",
                "--bootstrap-servers", bootstrap, "--state-dir", str(wdir), "--instance-id", instance_id,
                "--log-level", log_level, "--supervisor-pid", str(os.getpid()), *extra, *extra_args(i))
        specs.append(WorkerSpec(index=i, instance_id=instance_id, state_dir=wdir, argv=argv))
    return specs


class Phase(enum.Enum):
    """Where a worker is; moves follow ``_MOVES``."""

    WAITING = "waiting"    # no process; (re)started at `start_at`
    RUNNING = "running"    # its process is alive as far as we know
    STOPPING = "stopping"  # we sent it SIGTERM
    STOPPED = "stopped"    # it exited and is not started again


_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.WAITING: frozenset({Phase.RUNNING, Phase.STOPPED}),
    Phase.RUNNING: frozenset({Phase.WAITING, Phase.STOPPING, Phase.STOPPED}),
    Phase.STOPPING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


class IllegalMove(RuntimeError):
    """A worker was moved between phases the supervisor never moves it between (a bug)."""


class _Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.phase = Phase.WAITING
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_at = 0.0  # monotonic
        self.started = 0.0
        self.delay: float | None = None  # the last restart delay
        self.code: int | None = None     # its exit code once STOPPED

    def move(self, to: Phase) -> None:
        if to not in _MOVES[self.phase]:
            raise IllegalMove(f"worker {self.spec.index}: {self.phase.value} -> {to.value}")
        self.phase = to

    @property
    def name(self) -> str:
        pid = self.proc.pid if self.proc is not None else "-"
        return f"worker {self.spec.index} (pid {pid}, instance {self.spec.instance_id})"


class Supervisor:
    """Runs the workers of ``specs`` until ``request_stop()`` or a worker's configuration error."""

    def __init__(self, specs: Sequence[WorkerSpec], *, stop_s: float,
                 policy: RestartPolicy = RestartPolicy()) -> None:
        self._workers = [_Worker(s) for s in specs]
        self._stop_s = stop_s
        self._policy = policy
        self._stop_requested = False

    def request_stop(self) -> None:
        """Stop every worker and return from ``run()``; safe to call from a signal handler."""
        self._stop_requested = True

    def run(self) -> int:
        """Supervise; returns the exit code: 0 when every worker stopped cleanly on request, the
        configuration-error code a worker exited with, else the first unclean worker's code."""
        try:
            return self._stop_all(self._supervise())
        finally:
            self._kill_left()  # an unexpected error must not leave workers behind

    def _supervise(self) -> int | None:
        while not self._stop_requested:
            now = time.monotonic()
            for w in self._workers:
                if w.phase is Phase.WAITING and now >= w.start_at:
                    self._start(w)
                elif w.phase is Phase.RUNNING and w.proc is not None and (code := w.proc.poll()) is not None:
                    if code == CONFIGURATION_ERROR:
                        log.error("%s exited with a configuration error (exit code %d): stopping all workers",
                                  w.name, code)
                        w.code = code
                        w.move(Phase.STOPPED)
                        return code
                    self._restart_later(w, describe_exit(code), now)
            time.sleep(POLL_S)
        return None

    def _start(self, w: _Worker) -> None:
        try:
            # Our process group: a Ctrl-C at a terminal reaches the workers too (they stop as on our
            # SIGTERM), and their output to the terminal is a foreground group's, never stopped by SIGTTOU.
            w.proc = subprocess.Popen(w.spec.argv, stdin=subprocess.DEVNULL)
        except OSError as e:
            w.proc = None
            self._restart_later(w, f"could not start: {e}", time.monotonic())
            return
        w.started = time.monotonic()
        w.move(Phase.RUNNING)
        log.info("%s started (state dir %s)", w.name, w.spec.state_dir)

    def _restart_later(self, w: _Worker, why: str, now: float) -> None:
        ran = now - w.started if w.proc is not None else 0.0
        w.delay = self._policy.next_delay(w.delay, ran)
        w.start_at = now + w.delay
        if w.phase is not Phase.WAITING:
            w.move(Phase.WAITING)
        log.warning("%s died: %s after %.1fs; restarting it in %.0fs", w.name, why, ran, w.delay)

    def _stop_all(self, fatal: int | None) -> int:
        for w in self._workers:
            if w.phase is Phase.RUNNING and w.proc is not None:
                log.info("stopping %s", w.name)
                w.proc.send_signal(signal.SIGTERM)
                w.move(Phase.STOPPING)
            elif w.phase is Phase.WAITING:
                w.move(Phase.STOPPED)
        deadline = time.monotonic() + self._stop_s
        while self._stopping() and time.monotonic() < deadline:
            for w in self._stopping():
                if w.proc is not None and (code := w.proc.poll()) is not None:
                    w.code = code
                    w.move(Phase.STOPPED)
                    (log.info if _clean(code) else log.warning)("%s stopped: %s", w.name, describe_exit(code))
            time.sleep(POLL_S)
        for w in self._stopping():
            log.error("%s still running %.0fs after SIGTERM; killing it", w.name, self._stop_s)
            w.code = _kill(w)
            w.move(Phase.STOPPED)
        if fatal is not None:
            return fatal
        unclean = [w.code for w in self._workers if w.code is not None and not _clean(w.code)]
        return _shell_code(unclean[0]) if unclean else 0

    def _stopping(self) -> list[_Worker]:
        return [w for w in self._workers if w.phase is Phase.STOPPING]

    def _kill_left(self) -> None:
        for w in self._workers:
            if w.proc is not None and w.proc.poll() is None:
                _kill(w)


def _kill(w: _Worker) -> int:
    if w.proc is None:
        return 0
    w.proc.kill()
    try:
        return w.proc.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        log.error("%s did not die of SIGKILL within %.0fs; leaving it", w.name, KILL_WAIT_S)
        return -signal.SIGKILL


def _clean(code: int) -> bool:
    # Killed by SIGTERM, or 130 (KeyboardInterrupt: a Ctrl-C): the signal came before the worker
    # installed its handlers, so it had started nothing.
    return code in (0, -signal.SIGTERM, 130)


def _shell_code(code: int) -> int:
    return 128 - code if code < 0 else code


def describe_exit(code: int) -> str:
    """A Popen return code in words: ``exit code 1``, ``killed by SIGKILL``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def wait_until_unlocked(roots: Sequence[Path], timeout_s: float) -> None:
    """Wait, at most `timeout_s`, until no process holds these state dirs: the workers of a
    supervisor SIGKILLed a moment ago may still be stopping. One still held after that makes its
    worker exit with a configuration error that names the holder."""
    held = [r for r in roots if is_locked(r)]
    if held:
        log.info("waiting up to %.0fs for the processes holding %s to exit", timeout_s,
                 ", ".join(map(str, held)))
    deadline = time.monotonic() + timeout_s
    while held and time.monotonic() < deadline:
        time.sleep(0.2)
        held = [r for r in held if is_locked(r)]


def die_with_parent(parent_pid: int) -> bool:
    """Have SIGTERM sent to this process when its parent (the supervisor) dies, however it dies.
    False if the parent is gone already. Linux: ``prctl(PR_SET_PDEATHSIG)``, sent by the kernel
    when the thread that forked us exits (the supervisor forks from its main thread only);
    elsewhere a daemon thread that checks the parent pid every second."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    # A parent that died before the signal was armed never sends it: check after arming.
    return os.getppid() == parent_pid


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
